"""Prompts for schema-driven extraction: instruction text, schema batches, text chunks.

The instruction wording and answer-format sentences are ``knowlm_ray.ie.templates``', which the
instruction builder (``knowlm_ray.instruct.kg2instruct``) writes its training data with, so a
LoRA trained on its output is asked the way it was taught. Training draws a template at random;
serving and batch extraction use one fixed template (``SERVE_TEMPLATE``) and the caller's label
order, so the same request always gives the same prompt.

Long schemas are cut into batches as IEPile does (``split_num``: NER 6, RE / EE 4 labels per
prompt; a remainder smaller than ``max(1, split_num // 2)`` joins the last batch, else it is a
batch of its own), and long texts into chunks at sentence boundaries; every (chunk, batch) pair
is one prompt.
"""

from __future__ import annotations

import json
from typing import Any

from knowlm_ray.corpus.split import split_sentences
from knowlm_ray.ie.parsers import FIELD, FORMATS, TASKS
from knowlm_ray.ie.schema import Schema
from knowlm_ray.ie.templates import FORMAT_TEXT, LANGS, TEMPLATES, guess_lang, render_output

SPLIT_NUM = {"ner": 6, "re": 4, "ee": 4}  # IEPile's labels per prompt
SERVE_TEMPLATE = 0  # the fixed template index for serving / batch extraction
DEFAULT_MAX_CHARS = 400  # characters of text per prompt (fits a 1024-token context with the instruction)


def schema_text(task: str, labels: Schema) -> str:
    """The labels as the instruction shows them (JSON; EE: ``{type: [roles]}``)."""
    if task == "ee" and isinstance(labels, dict):
        if all(roles is not None for roles in labels.values()):
            return json.dumps(labels, ensure_ascii=False)
        return json.dumps(list(labels), ensure_ascii=False)  # some roles unconstrained: types only
    return json.dumps(list(labels), ensure_ascii=False)


def build_instruction(task: str, labels: Schema, lang: str, fmt: str = "json", template: int = SERVE_TEMPLATE) -> str:
    """The instruction for one prompt: template ``template`` of ``task``/``lang`` with the labels."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if lang not in LANGS:
        raise ValueError(f"unknown lang {lang!r} (expected one of {', '.join(LANGS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")
    templates = TEMPLATES[task][lang]
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in 0..{len(templates) - 1}, got {template}")
    return templates[template].format(schema=schema_text(task, labels), fmt=FORMAT_TEXT[(task, fmt)][lang])


def split_sizes(n: int, split_num: int) -> list[int]:
    """IEPile's batch sizes for ``n`` labels (remainder rule in the module docstring)."""
    if split_num < 1:
        raise ValueError(f"split_num must be >= 1, got {split_num}")
    full, rest = divmod(n, split_num)
    sizes = [split_num] * full
    if rest:
        if sizes and rest < max(1, split_num // 2):
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes


def split_schema(task: str, labels: Schema, split_num: int | None = None) -> list[Schema]:
    """``labels`` in batches of about ``split_num`` (default ``SPLIT_NUM[task]``), order kept."""
    keys = list(labels)
    out: list[Schema] = []
    start = 0
    for size in split_sizes(len(keys), split_num or SPLIT_NUM[task]):
        part = keys[start : start + size]
        start += size
        out.append({k: labels[k] for k in part} if isinstance(labels, dict) else part)
    return out


def split_text(text: str, lang: str, max_chars: int | None = DEFAULT_MAX_CHARS) -> list[tuple[int, str]]:
    """``(offset, chunk)`` pieces of at most ``max_chars`` characters, cut at sentence ends.

    Whole sentences are packed greedily; a sentence longer than ``max_chars`` is cut into
    ``max_chars`` pieces. The chunks partition the text: ``text[offset:offset + len(chunk)] == chunk``.
    """
    if not max_chars or len(text) <= max_chars:
        return [(0, text)]
    pieces: list[str] = []
    for sent in split_sentences(text, lang if lang in ("zh", "en") else guess_lang(text)):
        while len(sent) > max_chars:
            pieces.append(sent[:max_chars])
            sent = sent[max_chars:]
        if sent:
            pieces.append(sent)
    chunks: list[tuple[int, str]] = []
    offset, current, start = 0, "", 0
    for piece in pieces:
        if current and len(current) + len(piece) > max_chars:
            chunks.append((start, current))
            start, current = offset, ""
        current += piece
        offset += len(piece)
    if current:
        chunks.append((start, current))
    return chunks


def prompt_pairs(
    task: str,
    text: str,
    labels: Schema,
    lang: str,
    *,
    fmt: str = "json",
    template: int = SERVE_TEMPLATE,
    split_num: int | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[dict[str, Any]]:
    """One ``{"instruction", "input", "offset", "chunk", "labels"}`` per (chunk, schema batch)."""
    batches = split_schema(task, labels, split_num)
    out = []
    for ci, (offset, chunk) in enumerate(split_text(text, lang, max_chars)):
        if not chunk.strip():
            continue
        for batch in batches:
            out.append(
                {
                    "instruction": build_instruction(task, batch, lang, fmt, template),
                    "input": chunk,
                    "offset": offset,
                    "chunk": ci,
                    "labels": batch,
                }
            )
    return out


def serve_format_instructions(
    records: list[dict[str, Any]],
    task: str,
    labels: Schema,
    lang: str,
    *,
    fmt: str = "json",
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> list[dict]:
    """Alpaca rows that ask exactly what ``/extract`` will ask: the fixed template, ``labels`` in
    the given order, the same schema batches and text chunks (``prompt_pairs``), each answered
    with the record's gold items of that batch that lie in that chunk (``render_output``).

    ``kg2instruct.build_instructions`` varies templates, label order and format so a model learns
    the task; these rows are for a model that only has to learn the serving prompt (the demo).
    """
    rows = []
    for rec in records:
        for p in prompt_pairs(task, rec["text"], labels, lang, fmt=fmt, max_chars=max_chars):
            batch, chunk = set(p["labels"]), p["input"]
            items = [x for x in rec.get(FIELD[task]) or [] if _in_batch(task, x, batch, chunk)]
            rows.append(
                {
                    "instruction": p["instruction"],
                    "input": chunk,
                    "output": render_output(task, lang, fmt, items, list(p["labels"])),
                    "task": task,
                    "lang": lang,
                    "format": fmt,
                    "id": rec["id"],
                    "labels": p["labels"],
                }
            )
    return rows


def _in_batch(task: str, item: dict, batch: set, chunk: str) -> bool:
    if task == "ner":
        return item["type"] in batch and item["text"] in chunk
    if task == "re":
        return item["relation"] in batch and item["head"] in chunk and item["tail"] in chunk
    return item["type"] in batch and item["trigger"] in chunk
