"""Schema-driven extraction: prompts → generation → parse → schema check → offsets → IE record.

Generation is a plain callable, so the serving engine, a Ray actor or a test double drives it::

    generate_fn(prompts: list[str]) -> list[str]     # whole prompts, sent verbatim -> answers

    record = extract_record(generate_fn, "ner", text, ["人物", "地理位置"], "zh", prompt_format="oneke")

``extract_record`` builds one prompt per (text chunk, schema batch) in the request's prompt format
(``knowlm_ray.ie.formats``: ``alpaca`` by default, ``oneke``, ``zhixi``, ``chat``), makes **one**
``generate_fn`` call for all of them, reads each answer the format's way, keeps the
labels of the schema (``schema``), anchors every span to character offsets (``offsets``) and
merges the batches into one DESIGN IE record, plus ``raw`` (the model's answers, in prompt order),
``dropped`` (labels outside the schema, with counts) and ``unparsed`` (answers with no answer
structure at all). Whatever the model writes, the record has this shape.

For async callers (the HTTP route): ``plan = plan_extraction(...)``, generate ``plan.texts``
(the whole prompts) however you like, then ``assemble(plan, answers)``. ``extract_many`` does several records with
one ``generate_fn`` call (batch extraction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowlm_ray.errors import UserError
from knowlm_ray.ie.formats import DEFAULT_FORMAT, PromptFormatError, check_format_name, get_format
from knowlm_ray.ie.offsets import SpanLocator
from knowlm_ray.ie.parsers import FIELD, FORMATS, TASKS, item_key
from knowlm_ray.ie.prompts import DEFAULT_MAX_CHARS, SERVE_TEMPLATE
from knowlm_ray.ie.schema import Schema, SchemaChecker, SchemaError, normalize_schema
from knowlm_ray.ie.templates import LANGS, guess_lang

GenerateFn = Callable[[list[str]], list[str]]


class IERequestError(UserError, ValueError):
    """An extraction request the caller got wrong (bad task, empty text, bad schema): a 400."""


def record_id_for(text: str) -> str:
    """A stable id for a text (IEPile keys test rows by a hash of the text)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class ExtractionPlan:
    task: str
    text: str
    lang: str
    record_id: str
    schema: Schema
    prompts: list[dict[str, Any]]  # formats.FormatPrompt.as_dict(): prompt, instruction, input, offset, chunk, labels
    prompt_format: str = DEFAULT_FORMAT

    @property
    def texts(self) -> list[str]:
        """The whole prompts, in order: what a generate_fn gets and sends verbatim."""
        if any(p["prompt"] is None for p in self.prompts):
            raise PromptFormatError("prompt_format: 'chat' prompts need the model's tokenizer to be rendered")
        return [p["prompt"] for p in self.prompts]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(instruction, input) per prompt (the alpaca-template formats' halves)."""
        return [(p["instruction"], p["input"]) for p in self.prompts]


def plan_extraction(
    task: str,
    text: str,
    schema: Any,
    lang: str | None = None,
    *,
    record_id: str | None = None,
    fmt: str = "json",
    template: int = SERVE_TEMPLATE,
    split_num: int | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    prompt_format: str | None = None,
    example: list[dict[str, Any]] | None = None,
    tokenizer: Any = None,
) -> ExtractionPlan:
    """Check a request and build its prompts in ``prompt_format`` (default ``alpaca``; ``chat``
    renders with ``tokenizer``); raises IERequestError naming what is wrong."""
    if task not in TASKS:
        raise IERequestError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(text, str) or not text.strip():
        raise IERequestError("text: must be a non-empty string")
    lang = lang or guess_lang(text)
    if lang not in LANGS:
        raise IERequestError(f"lang: must be one of {', '.join(LANGS)}, got {lang!r}")
    if fmt not in FORMATS:
        raise IERequestError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        pf = get_format(prompt_format)
        labels = normalize_schema(task, schema)
        extra = {"template": template} if template != SERVE_TEMPLATE else {}
        if extra and pf.name != "alpaca":
            raise IERequestError(f"template: only the alpaca prompt format varies its template, not {pf.name!r}")
        items = pf.prompts(
            task,
            text,
            schema,
            lang,
            split_num=split_num,
            max_chars=max_chars,
            example=example,
            fmt=fmt,
            tokenizer=tokenizer,
            **extra,
        )
    except PromptFormatError as exc:
        raise IERequestError(str(exc)) from None
    except SchemaError as exc:  # its message already names schema[...] where it can
        msg = str(exc)
        raise IERequestError(msg if msg.startswith("schema") else f"schema: {msg}") from None
    except ValueError as exc:
        raise IERequestError(str(exc)) from None
    prompts = [p.as_dict() for p in items]
    return ExtractionPlan(task, text, lang, record_id or record_id_for(text), labels, prompts, pf.name)


def _locate(task: str, item: dict, loc: SpanLocator, window: tuple[int, int]) -> dict:
    if task == "ner":
        text, start, end = loc.anchor(item["text"], key=("entity", item["text"]), window=window)
        return {"text": text, "type": item["type"], "start": start, "end": end}
    if task == "re":
        head, hs, he = loc.anchor(item["head"], window=window)
        avoid = {hs} if hs is not None and item["tail"] == item["head"] else None
        tail, ts, te = loc.anchor(item["tail"], window=window, avoid=avoid)
        return {
            "head": head,
            "relation": item["relation"],
            "tail": tail,
            "head_start": hs,
            "head_end": he,
            "tail_start": ts,
            "tail_end": te,
        }
    trigger, s, e = loc.anchor(item["trigger"], key=("trigger", item["trigger"]), window=window)
    taken: dict[str, set[int]] = {}
    args = []
    for a in item["arguments"]:
        t, s2, e2 = loc.anchor(a["text"], window=window, avoid=taken.get(a["text"]))
        if s2 is not None:
            taken.setdefault(a["text"], set()).add(s2)
        args.append({"role": a["role"], "text": t, "start": s2, "end": e2})
    return {"type": item["type"], "trigger": trigger, "trigger_start": s, "trigger_end": e, "arguments": args}


def _position(task: str, item: dict) -> tuple:
    if task == "ner":
        return (item["start"],)
    if task == "re":
        return (item["head_start"], item["tail_start"])
    return (item["trigger_start"],)


def empty_record(record_id: str, text: str, lang: str | None = None) -> dict[str, Any]:
    return {
        "id": record_id,
        "text": text,
        "lang": lang or guess_lang(text),
        "entities": [],
        "relations": [],
        "events": [],
        "raw": [],
        "dropped": [],
        "unparsed": 0,
    }


def assemble(plan: ExtractionPlan, answers: Sequence[str]) -> dict[str, Any]:
    """The IE record for ``plan`` from the model's ``answers`` (one per prompt, in order)."""
    if len(answers) != len(plan.prompts):
        raise RuntimeError(f"generate_fn returned {len(answers)} answers for {len(plan.prompts)} prompts")
    task = plan.task
    record = empty_record(plan.record_id, plan.text, plan.lang)
    record["raw"] = [a if isinstance(a, str) else "" for a in answers]
    checker = SchemaChecker(task, plan.schema)
    locator = SpanLocator(plan.text)
    pf = get_format(plan.prompt_format)
    out, seen = record[FIELD[task]], set()
    chunk_seen: dict[int, set] = {}
    for prompt, answer in zip(plan.prompts, record["raw"]):
        parsed = pf.read_answer(task, answer, plan.schema)
        record["unparsed"] += parsed.status == "unparsed"
        window = (prompt["offset"], prompt["offset"] + len(prompt["input"]))
        in_chunk = chunk_seen.setdefault(prompt["chunk"], set())
        for item in checker.check(parsed.items):
            key = item_key(task, item)
            if key in in_chunk:  # the same answer from two schema batches of one chunk
                continue
            in_chunk.add(key)
            located = _locate(task, item, locator, window)
            full = (
                item_key(
                    task,
                    {
                        **located,
                        "arguments": [{"role": a["role"], "text": a["text"]} for a in located.get("arguments", [])],
                    },
                ),
                _position(task, located),
            )
            if full not in seen:  # the same mention found from two chunks
                seen.add(full)
                out.append(located)
    record["dropped"] = checker.report()
    return record


def extract_record(
    generate_fn: GenerateFn, task: str, text: str, schema: Any, lang: str | None = None, **options: Any
) -> dict[str, Any]:
    """Extract ``task`` items of ``schema`` from ``text``: one IE record (+ raw, dropped, unparsed).
    ``options``: ``plan_extraction``'s keywords (record_id, fmt, prompt_format, ...).

    Raises IERequestError for a bad request; never for what the model writes.
    """
    plan = plan_extraction(task, text, schema, lang, **options)
    return assemble(plan, list(generate_fn(plan.texts)))


def extract_many(generate_fn: GenerateFn, requests: Iterable[dict[str, Any]], **options: Any) -> list[dict]:
    """Several requests (``{"task", "text", "schema", "lang"?, "id"?}``), one ``generate_fn`` call."""
    plans = [
        plan_extraction(r["task"], r["text"], r["schema"], r.get("lang"), record_id=r.get("id"), **options)
        for r in requests
    ]
    texts = [p for plan in plans for p in plan.texts]
    answers = list(generate_fn(texts)) if texts else []
    if len(answers) != len(texts):
        raise RuntimeError(f"generate_fn returned {len(answers)} answers for {len(texts)} prompts")
    out, i = [], 0
    for plan in plans:
        n = len(plan.prompts)
        out.append(assemble(plan, answers[i : i + n]))
        i += n
    return out


def merge_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record from several tasks' records of the same text (lists concatenated)."""
    if not records:
        raise ValueError("merge_records needs at least one record")
    first = records[0]
    merged = empty_record(first["id"], first["text"], first.get("lang"))
    for rec in records:
        for key in ("entities", "relations", "events", "raw", "dropped"):
            merged[key].extend(rec.get(key, []))
        merged["unparsed"] += rec.get("unparsed", 0)
    return merged


# ------------------------------------------------------------------------- engine and HTTP
def engine_generate_fn(engine: Any, parameters: Any = None) -> Callable[..., list[str]]:
    """A generate_fn over a ``knowlm_ray.generation.engine.GenerationEngine`` (in-process, no Ray).

    ``parameters``: a GenerationParams or its dict (default: greedy, 128 new tokens). A prompt the
    model's context cannot hold is answered with "" (so it parses as nothing) instead of failing
    the whole batch. The returned function also takes ``parameters=`` per call. Its items are
    whole prompts, sent verbatim (the tokenizer adds BOS); an (instruction, input) pair is put in
    the alpaca template first. ``constraints=`` (one ``ConstraintSpec`` or None per prompt) decodes
    those answers constrained (``generation.constraints``).
    """
    from knowlm_ray.alpaca import build_prompt
    from knowlm_ray.generation.errors import RequestError
    from knowlm_ray.generation.params import GenerateRequest, GenerationParams

    def as_params(p: Any) -> GenerationParams:
        if p is None:
            return GenerationParams()
        return p if isinstance(p, GenerationParams) else GenerationParams.model_validate(p)

    default = as_params(parameters)

    def generate(
        prompts: list[str | tuple[str, str]], parameters: Any = None, constraints: Sequence[Any] | None = None
    ) -> list[str]:
        params = as_params(parameters) if parameters is not None else default
        answers = [""] * len(prompts)
        prepared, index = [], []
        for k, item in enumerate(prompts):
            try:
                if constraints is not None and constraints[k] is not None:
                    prompt = item if isinstance(item, str) else build_prompt(*item)
                    prepared.append(engine.prepare_prompt(prompt, params, constraint=constraints[k]))
                elif isinstance(item, str):
                    prepared.append(engine.prepare_prompt(item, params))
                else:
                    instruction, inp = item
                    prepared.append(
                        engine.prepare(GenerateRequest(instruction=instruction, input=inp, parameters=params))
                    )
                index.append(k)
            except RequestError:
                pass
        for k, result in zip(index, engine.generate_prepared(prepared) if prepared else []):
            answers[k] = result.text
        return answers

    return generate


class ExtractRequest(BaseModel):
    """``POST /extract`` body: DESIGN's ``{"task", "text", "schema", "lang"}`` (+ optional extras)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    task: Literal["ner", "re", "ee"]
    text: str = Field(min_length=1)
    labels: list[Any] | dict[str, Any] = Field(alias="schema")
    lang: Literal["zh", "en"] | None = None
    id: str | None = None
    format: Literal["json", "tuple"] = "json"
    parameters: dict[str, Any] | None = None  # GenerationParams fields, checked by the engine
    model: str | None = None  # serving: the base model or a configured LoRA adapter's name
    prompt_format: str | None = None  # formats.NAMES; None: the served model's (or alpaca)
    example: list[dict[str, Any]] | None = None  # oneke: OneKE's optional worked examples
    # Constrained decoding (answer_schema.plan_constraints): answers are valid in their format's
    # shape for their label batch; "span": every mention a substring of the text.
    constrained: bool = True
    mentions: Literal["any", "span"] = "any"


def parse_extract_request(body: Any) -> ExtractRequest:
    """Validate a request body; IERequestError with ``field: problem`` lines on failure."""
    try:
        req = ExtractRequest.model_validate(body)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "body"
            lines.append(f"{key}: {'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}")
        raise IERequestError("; ".join(lines)) from None
    if not req.text.strip():
        raise IERequestError("text: must not be blank")
    if req.prompt_format is not None:
        try:
            check_format_name(req.prompt_format)
        except PromptFormatError as exc:
            raise IERequestError(str(exc)) from None
    if req.parameters is not None:
        from knowlm_ray.generation.params import GenerationParams

        try:
            GenerationParams.model_validate(req.parameters)
        except ValidationError as err:
            raise IERequestError(
                "; ".join(f"parameters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            ) from None
    return req


def handle_extract(body: Any, generate_fn: Callable[..., list[str]], **options: Any) -> dict[str, Any]:
    """The whole ``/extract`` request: validate ``body``, extract, return the response dict.

    Raises IERequestError (→ 400) for a bad body. ``generate_fn(prompts)`` is called once; when the
    body carries ``parameters`` it is called as ``generate_fn(prompts, parameters=dict)``; when
    the request is constrained (the default) and ``generate_fn`` takes ``constraints``, with
    ``constraints=`` one spec per prompt (``answer_schema.plan_constraints``).
    ``options`` go to ``plan_extraction``; a body's ``prompt_format`` overrides
    ``options["prompt_format"]`` (the served model's).
    """
    req = parse_extract_request(body)
    if req.prompt_format is not None:
        options = {**options, "prompt_format": req.prompt_format}
    if req.example is not None:
        options = {**options, "example": req.example}
    plan = plan_extraction(req.task, req.text, req.labels, req.lang, record_id=req.id, fmt=req.format, **options)
    texts = plan.texts
    kwargs: dict[str, Any] = {} if req.parameters is None else {"parameters": req.parameters}
    if req.constrained and _takes(generate_fn, "constraints"):
        kwargs["constraints"] = request_constraints(plan, req)
    answers = generate_fn(texts, **kwargs)
    return assemble(plan, list(answers))


def request_constraints(plan: ExtractionPlan, req: ExtractRequest) -> list[Any] | None:
    """The constraint of each prompt of ``plan`` (None when the request is not constrained)."""
    if not req.constrained:
        return None
    from knowlm_ray.ie.answer_schema import plan_constraints

    return plan_constraints(plan, req.mentions)


def _takes(fn: Callable, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
