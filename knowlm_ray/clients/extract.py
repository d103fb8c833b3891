"""``knowlm extract``: schema-driven NER / RE / EE on a text, via a server or a local model.

    knowlm extract --task T --schema LABEL [LABEL ...] [--lang zh|en] (--text S | --file F)
                   [--server URL | --model DIR] [--format json|tuple] [--max-tokens N]
                   [--prompt-format alpaca|oneke|zhixi|chat] [--show-prompts]

``extract --schema``: labels as separate words; for events ``TYPE=ROLE,ROLE`` (or a JSON schema
as one word). ``--file``: a ``.jsonl`` file of ``{"id"?, "text"}`` records (one output line each)
or any other text file, read as one document. ``--server`` posts to ``/extract``; ``--model`` runs
``knowlm_ray.ie.extract`` over a ``GenerationEngine`` in this process (no Ray).
``--prompt-format`` asks in that format (``knowlm_ray.ie.formats``; with ``--server``: the
request's ``prompt_format``, else the server's). ``--show-prompts`` prints the exact prompts it
would send, one JSON string per line and nothing else, after splitting text and schema, and
generates nothing: it needs no server or model, except ``chat``, which reads ``--model``'s
tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from knowlm_ray.ie.formats import NAMES as PROMPT_FORMATS


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_schema_args(task: str, words: list[str]) -> Any:
    """``--schema`` words → a schema: JSON as one word, ``TYPE=ROLE,ROLE`` for events, else labels."""
    if len(words) == 1 and words[0].lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(words[0])
        except json.JSONDecodeError as exc:
            _fail(f"--schema: not valid JSON: {exc.msg}")
    if task == "ee" and any("=" in w for w in words):
        out: dict[str, list[str] | None] = {}
        for w in words:
            etype, _, roles = w.partition("=")
            out[etype] = [r.strip() for r in roles.split(",") if r.strip()] if roles else None
        return out
    return words


def read_documents(text: str | None, file: str | None) -> list[dict[str, Any]]:
    if text is not None:
        return [{"text": text}]
    p = Path(file)  # type: ignore[arg-type]
    if not p.is_file():
        _fail(f"--file: not found: {p}")
    if p.suffix != ".jsonl":
        return [{"text": p.read_text(encoding="utf-8")}]
    docs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            _fail(f"{p}:{n}: invalid JSON: {exc.msg}")
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            _fail(f"{p}:{n}: expected an object with a 'text' string")
        docs.append({"text": obj["text"], **({"id": str(obj["id"])} if "id" in obj else {})})
    return docs


def post_extract(
    server: str, body: dict[str, Any], timeout: float = 300.0, api_key: str | None = None
) -> dict[str, Any]:
    """``POST {server}/extract``; a missing route, an HTTP error or no server is one clear error."""
    from knowlm_ray.clients.http import ServerError, post

    url = server.rstrip("/") + "/extract"
    try:
        resp = post(url, body, api_key, timeout)
    except ServerError as exc:
        if exc.status in (404, 405):
            raise RuntimeError(
                f"the server at {server} has no POST /extract route (HTTP {exc.status}); "
                f"is it a knowlm server with extraction enabled?"
            ) from None
        raise RuntimeError(f"{url}: {exc}") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RuntimeError(f"{url} did not answer with a JSON object")
    return data


def _extract(a: argparse.Namespace) -> None:
    from knowlm_ray.ie.extract import IERequestError, engine_generate_fn, extract_many, plan_extraction

    schema = parse_schema_args(a.task, a.schema)
    docs = read_documents(a.text, a.file)
    requests_ = [
        {"task": a.task, "text": d["text"], "schema": schema, "lang": a.lang, **({"id": d["id"]} if "id" in d else {})}
        for d in docs
    ]
    pf = a.prompt_format
    tokenizer = None
    if a.show_prompts and pf is None and a.server:  # its prompt_format is the server's, unknown here
        _fail("--show-prompts with --server needs --prompt-format F (the server's own format is not asked)")
    if a.show_prompts and pf == "chat":
        if not a.model:
            _fail("--show-prompts with --prompt-format chat needs --model DIR (its tokenizer's chat template)")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(a.model)
    try:
        plans = [  # check every request before loading a model or calling a server
            plan_extraction(
                r["task"], r["text"], r["schema"], r["lang"], fmt=a.format, prompt_format=pf, tokenizer=tokenizer
            )
            for r in requests_
        ]
        if a.show_prompts:
            for plan in plans:
                for prompt in plan.texts:
                    print(json.dumps(prompt, ensure_ascii=False))
            return
    except IERequestError as exc:
        _fail(str(exc))
    if not (a.server or a.model):
        _fail("one of --server URL or --model DIR is required (or --show-prompts)")
    records: list[dict] = []
    if a.server:
        params = {"max_tokens": a.max_tokens} if a.max_tokens else None
        try:
            for r in requests_:
                body = {k: v for k, v in r.items() if v is not None}
                body.update({"format": a.format} if a.format != "json" else {})
                body.update({"prompt_format": pf} if pf is not None else {})
                records.append(post_extract(a.server, {**body, **({"parameters": params} if params else {})}))
        except RuntimeError as exc:
            _fail(str(exc))
    else:
        from knowlm_ray.generation.engine import GenerationEngine

        engine = GenerationEngine(a.model)
        gen = engine_generate_fn(engine, {"max_tokens": a.max_tokens or 256})
        try:
            records = extract_many(gen, requests_, fmt=a.format, prompt_format=pf, tokenizer=engine.tokenizer)
        except IERequestError as exc:  # chat: the model's tokenizer has no chat template
            _fail(str(exc))
    if len(records) == 1 and a.text is not None:
        print(json.dumps(records[0], ensure_ascii=False, indent=1))
    else:
        for rec in records:
            print(json.dumps(rec, ensure_ascii=False))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``extract`` to the `knowlm` parser."""
    p = sub.add_parser("extract", help="schema-driven NER / RE / EE on a text (in-process or via a server)")
    p.add_argument("--task", required=True, choices=("ner", "re", "ee"))
    p.add_argument(
        "--schema",
        required=True,
        nargs="+",
        metavar="LABEL",
        help="labels; events as TYPE=ROLE,ROLE; or one JSON schema",
    )
    p.add_argument("--lang", choices=("zh", "en"), default=None, help="default: guessed from the text")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file", help=".jsonl of {id?, text} records, or a text file (one document)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", help="base URL of a running `knowlm serve` (POST URL/extract)")
    where.add_argument("--model", help="HF model directory, run in this process")
    p.add_argument("--format", default="json", choices=("json", "tuple"), help="answer format asked for")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per prompt (default 256 in-process)")
    p.add_argument(
        "--prompt-format",
        default=None,
        choices=PROMPT_FORMATS,
        help="how the model is asked (default: alpaca in-process, the server's own with --server)",
    )
    p.add_argument(
        "--show-prompts",
        action="store_true",
        help="print the exact prompts, one JSON string per line, and generate nothing (no server or model "
        "needed, except --model for chat; with --server, name --prompt-format)",
    )
    p.set_defaults(fn=_extract)
