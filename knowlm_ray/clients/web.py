"""``knowlm web``: KnowLM's gradio pages over a server: an instruction page (instruction, input,
decoding sliders) on ``/generate``, and an extraction page (task, schema, prompt format, text)
on ``/extract``.

KnowLM's ``generate_lora_web.py`` loaded the model into the UI process; here the page only
talks HTTP to a knowlm server, so one server feeds any number of pages and the UI needs no
GPU. Slider ranges and defaults are ``GenerationParams``' own (greedy, 128 new tokens: the
page sends every slider, so ``/generate``'s KnowLM defaults for absent keys never apply; not
KnowLM's beam-search defaults either, which are slow on a CPU). The extraction page shows the
answer as the text with each mention highlighted by its type (from the record's character
offsets), a table of the entities, relations or events, and the raw JSON. A server error
(4xx/503 JSON, or no server) shows as a readable message instead of a crash.

The server's API key stays in this process: the page's handlers call the server with it, and
nothing sent to a browser contains it. Whoever can open the page can use it, though, so on any
host but loopback the page has its own login (``--auth USER:PASSWORD``, ``--auth-file FILE`` or
``$KNOWLM_WEB_AUTH``), and without one ``knowlm web`` refuses to start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from knowlm_ray.clients.http import ServerError, headers, post
from knowlm_ray.errors import InputError, MissingPathError
from knowlm_ray.generation.params import GenerationParams
from knowlm_ray.ie.formats import NAMES as PROMPT_FORMAT_NAMES

# Upper ends for fields the server leaves open (top_k, max_tokens); KnowLM's UI stopped at 2000.
OPEN_BOUNDS = {"top_k": 100, "max_tokens": 2048}
LOW_BOUNDS = {"top_k": 0}  # the server also takes -1 (= off, as 0); the slider needs one "off"
SLIDERS = (  # (field, label, step)
    ("temperature", "Temperature (0 = greedy)", 0.05),
    ("top_p", "Top-p", 0.01),
    ("top_k", "Top-k (0 = off)", 1),
    ("num_beams", "Beams", 1),
    ("max_tokens", "Max new tokens", 1),
    ("repetition_penalty", "Repetition penalty", 0.05),
    ("presence_penalty", "Presence penalty", 0.1),
    ("frequency_penalty", "Frequency penalty", 0.1),
)


def slider_bounds(name: str) -> tuple[float, float, Any]:
    """(minimum, maximum, default) of a ``GenerationParams`` field, from its pydantic constraints."""
    info = GenerationParams.model_fields[name]
    step = {f: s for f, _, s in SLIDERS}[name]
    lo = hi = None
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:  # top_p > 0: one step above
            lo = m.gt + step
        if getattr(m, "le", None) is not None:
            hi = m.le
    return LOW_BOUNDS.get(name, lo), OPEN_BOUNDS.get(name, hi), info.default


def generate_body(instruction: str, input_text: str, *values: float, model: str | None = None) -> dict[str, Any]:
    """The ``/generate`` request for the page's fields (``values`` in ``SLIDERS`` order)."""
    params = {}
    for (name, _, _), v in zip(SLIDERS, values, strict=True):
        default = GenerationParams.model_fields[name].default
        params[name] = int(v) if isinstance(default, int) else float(v)  # sliders give floats
    body: dict[str, Any] = {"instruction": instruction, "input": input_text or "", "parameters": params}
    if model:
        body["model"] = model
    return body


def ask(server: str, body: dict[str, Any], api_key: str | None = None, timeout: float = 300.0) -> tuple[str, str]:
    """(answer, status line) for one ``/generate`` call; errors become the status line."""
    t0 = time.perf_counter()
    try:
        data = post(server.rstrip("/") + "/generate", body, api_key, timeout).json()
    except ServerError as exc:
        return "", f"**Error:** {exc}"
    except ValueError:
        return "", "**Error:** the server's answer is not JSON"
    if data.get("error"):
        return "", f"**Error:** {data['error']}"
    return (
        data.get("generated_text", ""),
        f"{data.get('num_output_tokens_cf', '?')} tokens in {time.perf_counter() - t0:.1f} s",
    )


# ------------------------------------------------------------------------------ extraction page
TASKS = ("ner", "re", "ee")
SERVER_FORMAT = "server's default"  # no prompt_format in the body: the served model's own
PROMPT_FORMATS = (SERVER_FORMAT, *PROMPT_FORMAT_NAMES)
LANGS = ("auto", "zh", "en")
TABLE_HEADERS = {
    "ner": ["entity", "type", "offsets"],
    "re": ["head", "relation", "tail", "head offsets", "tail offsets"],
    "ee": ["event type", "trigger", "role", "argument", "offsets"],
}
SCHEMA_HELP = (
    "one label per line, or JSON: a label -> description map "
    '({"人物": "人的名字"}), or for events {"event type": ["role", ...]}'
)


def parse_schema(text: str) -> list[Any] | dict[str, Any]:
    """The ``schema`` of an ``/extract`` body from the page's field: JSON when it starts with
    ``{`` or ``[``, else one label per line. ValueError says what is wrong."""
    s = (text or "").strip()
    if not s:
        raise ValueError(f"schema: give the labels ({SCHEMA_HELP})")
    if s[0] in "[{":
        try:
            value = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        if not value:
            raise ValueError("schema: the JSON is empty")
        return value
    return [line.strip() for line in s.splitlines() if line.strip()]


def extract_body(
    task: str,
    schema: str,
    prompt_format: str | None,
    text: str,
    lang: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The ``/extract`` request for the page's fields; ``prompt_format`` and ``lang`` are sent only
    when one is chosen, so the server's defaults (the served model's format) apply otherwise."""
    body: dict[str, Any] = {"task": task, "text": text or "", "schema": parse_schema(schema)}
    if lang and lang != "auto":
        body["lang"] = lang
    if prompt_format and prompt_format != SERVER_FORMAT:
        body["prompt_format"] = prompt_format
    if model:
        body["model"] = model
    return body


def _at(start: Any, end: Any) -> str:
    return f"{start}–{end}" if isinstance(start, int) and isinstance(end, int) else "not in the text"


def mentions(record: dict[str, Any]) -> list[tuple[int, int, str]]:
    """(start, end, label) of every mention the record places in its text: entities by type,
    relation heads and tails by relation, event triggers by event type and arguments by role."""
    out: list[tuple[Any, Any, str]] = []
    for e in record.get("entities") or []:
        out.append((e.get("start"), e.get("end"), str(e.get("type", ""))))
    for r in record.get("relations") or []:
        rel = str(r.get("relation", ""))
        out.append((r.get("head_start"), r.get("head_end"), f"{rel} (head)"))
        out.append((r.get("tail_start"), r.get("tail_end"), f"{rel} (tail)"))
    for ev in record.get("events") or []:
        out.append((ev.get("trigger_start"), ev.get("trigger_end"), f"{ev.get('type', '')} (trigger)"))
        for a in ev.get("arguments") or []:
            out.append((a.get("start"), a.get("end"), str(a.get("role", ""))))
    n = len(record.get("text") or "")
    return [(s, e, label) for s, e, label in out if isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= n]


def highlights(record: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The record's text as gradio ``HighlightedText`` pieces: (piece, label or None). Where
    mentions overlap, the one that starts first (then the longer) is shown."""
    text = record.get("text") or ""
    pieces: list[tuple[str, str | None]] = []
    pos = 0
    for start, end, label in sorted(mentions(record), key=lambda m: (m[0], -m[1])):
        if start < pos:
            continue  # overlaps a mention already shown
        if start > pos:
            pieces.append((text[pos:start], None))
        pieces.append((text[start:end], label))
        pos = end
    if pos < len(text):
        pieces.append((text[pos:], None))
    return pieces


def table_rows(task: str, record: dict[str, Any]) -> list[list[str]]:
    """Rows under ``TABLE_HEADERS[task]``: one per entity, relation, or event argument (an event
    without arguments is one row with empty role and argument)."""
    if task == "ner":
        return [
            [e.get("text", ""), e.get("type", ""), _at(e.get("start"), e.get("end"))]
            for e in record.get("entities") or []
        ]
    if task == "re":
        return [
            [
                r.get("head", ""),
                r.get("relation", ""),
                r.get("tail", ""),
                _at(r.get("head_start"), r.get("head_end")),
                _at(r.get("tail_start"), r.get("tail_end")),
            ]
            for r in record.get("relations") or []
        ]
    rows = []
    for ev in record.get("events") or []:
        trigger = f"{ev.get('trigger', '')} ({_at(ev.get('trigger_start'), ev.get('trigger_end'))})"
        for a in ev.get("arguments") or [{}]:
            at = _at(a.get("start"), a.get("end")) if a else ""
            rows.append([ev.get("type", ""), trigger, a.get("role", ""), a.get("text", ""), at])
    return rows


def extract_status(task: str, record: dict[str, Any], seconds: float) -> str:
    key = {"ner": "entities", "re": "relations", "ee": "events"}[task]
    n = len(record.get(key) or [])
    notes = [f"{n} {key[:-1] if n == 1 else key} in {seconds:.1f} s"]
    if record.get("unparsed"):
        notes.append(f"{record['unparsed']} answer(s) had no readable structure")
    dropped = record.get("dropped") or []
    if dropped:
        notes.append("outside the schema, dropped: " + ", ".join(str(d.get("label")) for d in dropped))
    return "; ".join(notes)


def ask_extract(
    server: str, task: str, body: dict[str, Any], api_key: str | None = None, timeout: float = 300.0
) -> tuple[list[tuple[str, str | None]] | None, dict[str, Any], dict[str, Any] | None, str]:
    """(highlighted text, table, record, status line) for one ``/extract`` call; an error
    leaves the answer empty and becomes the status line. The table is ``{"headers", "data"}``."""
    empty = {"headers": TABLE_HEADERS[task], "data": []}
    t0 = time.perf_counter()
    try:
        record = post(server.rstrip("/") + "/extract", body, api_key, timeout).json()
    except ServerError as exc:
        return None, empty, None, f"**Error:** {exc}"
    except ValueError:
        return None, empty, None, "**Error:** the server's answer is not JSON"
    if not isinstance(record, dict) or record.get("error"):
        return None, empty, None, f"**Error:** {record.get('error') if isinstance(record, dict) else record}"
    table = {"headers": TABLE_HEADERS[task], "data": table_rows(task, record)}
    return highlights(record), table, record, extract_status(task, record, time.perf_counter() - t0)


def list_models(server: str, api_key: str | None, timeout: float = 10.0) -> list[str]:
    """Base model and adapters from ``/v1/models``; empty when the server cannot say (yet)."""
    import requests

    try:
        r = requests.get(server.rstrip("/") + "/v1/models", headers=headers(api_key), timeout=timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return []


# ------------------------------------------------------------------------------ who may use it
AUTH_ENV = "KNOWLM_WEB_AUTH"


def is_loopback(host: str) -> bool:
    """Whether a page listening on ``host`` is reachable from this machine only. A name counts
    when every address it resolves to is loopback; ``0.0.0.0``, ``::`` and ``""`` never do."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def parse_logins(text: str, where: str) -> list[tuple[str, str]]:
    """``USER:PASSWORD`` entries, one per line (a password may contain ``:``); ``where`` names the
    source in the error."""
    logins = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user.strip() or not password:
            at = f" (line {n})" if "\n" in text.strip() else ""
            raise InputError(f"{where}{at}: expected USER:PASSWORD with a non-empty user and password")
        logins.append((user.strip(), password))
    if not logins:
        raise InputError(f"{where}: no USER:PASSWORD entry")
    return logins


def web_logins(host: str, auth: str | None = None, auth_file: str | None = None) -> list[tuple[str, str]] | None:
    """The page's logins from ``--auth``, else ``--auth-file``, else ``$KNOWLM_WEB_AUTH``; None
    when none is given, which only a loopback host accepts (anyone who reaches the page can use
    the server, with the server's key)."""
    if auth:
        return parse_logins(auth, "--auth")
    if auth_file:
        path = Path(auth_file)
        if not path.is_file():
            raise MissingPathError(f"--auth-file: {path} does not exist")
        return parse_logins(path.read_text(encoding="utf-8"), f"--auth-file {path}")
    if os.environ.get(AUTH_ENV):
        return parse_logins(os.environ[AUTH_ENV], f"${AUTH_ENV}")
    if not is_loopback(host):
        raise InputError(
            f"knowlm web --host {host}: a page reachable from other machines needs a login "
            f"(--auth USER:PASSWORD, --auth-file FILE or ${AUTH_ENV}); or use --host 127.0.0.1"
        )
    return None


def shown_url(url: str) -> str:
    """The server URL as the page may show it: without a user or password in it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def build_ui(server: str, api_key: str | None = None, timeout: float = 300.0):
    """The gradio Blocks page: an "Instruction" tab (element ids instruction, input, model,
    submit, answer, status) and an "Extraction" tab (x-task, x-schema, x-format, x-lang,
    x-model, x-text, x-submit, x-highlight, x-table, x-raw, x-status); the ids are stable."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    models = list_models(server, api_key)
    with gr.Blocks(title="KnowLM", analytics_enabled=False) as page:
        gr.Markdown(f"# KnowLM\nAnswers come from `{shown_url(server)}` (`POST /generate`, `POST /extract`).")
        with gr.Tab("Instruction", id="instruction-tab"):
            _instruction_tab(gr, server, api_key, timeout, models)
        with gr.Tab("Extraction", id="extraction-tab"):
            _extraction_tab(gr, server, api_key, timeout, models)
    return page


def _model_choice(gr, models: list[str], elem_id: str):
    return gr.Dropdown(
        choices=models,
        value=models[0] if models else None,
        label="Model",
        allow_custom_value=True,
        elem_id=elem_id,
        info="base model or a LoRA adapter configured on the server",
    )


def _instruction_tab(gr, server: str, api_key: str | None, timeout: float, models: list[str]) -> None:
    with gr.Row():
        with gr.Column():
            instruction = gr.Textbox(
                label="Instruction", lines=3, elem_id="instruction", placeholder="e.g. 请介绍一下浙江大学"
            )
            input_text = gr.Textbox(
                label="Input", lines=3, elem_id="input", placeholder="optional: the text the instruction is about"
            )
            model = _model_choice(gr, models, "model")
            sliders = []
            for name, label, step in SLIDERS:
                lo, hi, default = slider_bounds(name)
                sliders.append(gr.Slider(minimum=lo, maximum=hi, value=default, step=step, label=label, elem_id=name))
            submit = gr.Button("Submit", variant="primary", elem_id="submit")
        with gr.Column():
            answer = gr.Textbox(label="Answer", lines=12, elem_id="answer", interactive=False)
            status = gr.Markdown(elem_id="status")

    def on_submit(instr: str, inp: str, chosen: str | None, *values: float) -> tuple[str, str]:
        return ask(server, generate_body(instr, inp, *values, model=chosen), api_key, timeout)

    submit.click(on_submit, inputs=[instruction, input_text, model, *sliders], outputs=[answer, status])


def _extraction_tab(gr, server: str, api_key: str | None, timeout: float, models: list[str]) -> None:
    with gr.Row():
        with gr.Column():
            task = gr.Radio(list(TASKS), value="ner", label="Task", elem_id="x-task", info="ner, re or ee")
            schema = gr.Textbox(
                label="Schema", lines=5, elem_id="x-schema", placeholder="人物\n地理位置\n组织机构", info=SCHEMA_HELP
            )
            with gr.Row():
                fmt = gr.Dropdown(
                    list(PROMPT_FORMATS),
                    value=SERVER_FORMAT,
                    label="Prompt format",
                    elem_id="x-format",
                    info="how the model is asked; the server's default is the served model's own",
                )
                lang = gr.Dropdown(list(LANGS), value="auto", label="Language", elem_id="x-lang")
            model = _model_choice(gr, models, "x-model")
            text = gr.Textbox(label="Text", lines=6, elem_id="x-text", placeholder="the text to extract from")
            submit = gr.Button("Extract", variant="primary", elem_id="x-submit")
        with gr.Column():
            status = gr.Markdown(elem_id="x-status")
            marked = gr.HighlightedText(label="Mentions", elem_id="x-highlight", show_legend=True)
            table = gr.Dataframe(
                headers=TABLE_HEADERS["ner"], label="Entities, relations or events", elem_id="x-table", wrap=True
            )
            with gr.Accordion("Raw JSON", open=False, elem_id="x-raw-accordion"):
                raw = gr.JSON(elem_id="x-raw")

    def on_extract(task_: str, schema_: str, fmt_: str, lang_: str, model_: str | None, text_: str):
        try:
            body = extract_body(task_, schema_, fmt_, text_, lang_, model_)
        except ValueError as exc:  # the schema field cannot be read: no request at all
            return None, {"headers": TABLE_HEADERS[task_], "data": []}, None, f"**Error:** {exc}"
        return ask_extract(server, task_, body, api_key, timeout)

    submit.click(on_extract, inputs=[task, schema, fmt, lang, model, text], outputs=[marked, table, raw, status])


def serve_web(
    server: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    api_key: str | None = None,
    timeout: float = 300.0,
    logins: list[tuple[str, str]] | None = None,
) -> None:
    """Serve the page until interrupted (Ctrl-C ends it quietly). ``logins``: (user, password)
    pairs the page asks for; required on a host other than loopback (``web_logins``)."""
    if not logins and not is_loopback(host):
        web_logins(host)  # raises: no login for a page other machines can reach
    page = build_ui(server, api_key, timeout)
    try:
        page.queue().launch(
            server_name=host,
            server_port=port,
            share=False,
            show_error=True,
            quiet=False,
            auth=logins or None,
            auth_message="KnowLM: sign in with the login given to knowlm web" if logins else None,
        )
    except KeyboardInterrupt:
        page.close()
