"""Alpaca records, KnowLM's prompt template, and tokenisation with the prompt masked out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knowlm_ray.errors import UserError

IGNORE_INDEX = -100  # label value torch's cross-entropy skips

# KnowLM's templates/alpaca.json (the same wording tloen/alpaca-lora uses).
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
RESPONSE_SPLIT = "### Response:"


class RecordError(UserError, ValueError):
    pass


def build_prompt(instruction: str, input: str | None = None, output: str | None = None) -> str:
    """The prompt the model sees; with ``output`` it is the full training text (without EOS)."""
    text = (
        PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
        if input
        else PROMPT_NO_INPUT.format(instruction=instruction)
    )
    return text + (output or "")


def extract_response(generated: str) -> str:
    """The answer part of a decoded generation: what follows the last response marker."""
    return generated.split(RESPONSE_SPLIT)[-1].strip()


def is_iepile_record(obj: Any) -> bool:
    """An IEPile (OneKE) record: ``instruction`` is a JSON object string holding ``instruction`` and
    ``input``, with ``output`` (train) or ``label`` (test). Its prompt is OneKE's, not alpaca's."""
    if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
        return False
    text = obj["instruction"].lstrip()
    if not text.startswith("{") or ("output" not in obj and "label" not in obj):
        return False
    try:
        inner = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(inner, dict) and "instruction" in inner and "input" in inner


def validate_record(rec: Any, where: str) -> dict[str, str]:
    if is_iepile_record(rec):
        raise RecordError(
            f"{where}: an IEPile record (OneKE's instruction JSON): prepare it with prepare_instructions, "
            "which trains it in OneKE's own prompt, and train on the prepared shards"
        )
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected an object with instruction/input/output, got {type(rec).__name__}")
    for key in ("instruction", "output"):
        if not isinstance(rec.get(key), str):
            raise RecordError(f"{where}: field {key!r} is missing or not a string")
    if not isinstance(rec.get("input", ""), str):
        raise RecordError(f"{where}: field 'input' is not a string")
    out = {"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec["output"]}
    if rec.get("prompt") and isinstance(rec["prompt"], str):
        out["prompt"] = rec["prompt"]  # a prompt format's own text (knowlm_ray.ie.formats: chat); trained as is
    return out


def alpaca_files(path: str | Path) -> list[Path]:
    """The file ``path``, or the .json / .jsonl files of the directory ``path`` (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted([*p.glob("*.json"), *p.glob("*.jsonl")])
        if not files:
            raise RecordError(f"no .json/.jsonl files in {p}")
        return files
    if not p.is_file():
        raise RecordError(f"instruction data not found: {p}")
    return [p]


def load_alpaca(path: str | Path) -> list[dict[str, str]]:
    """Read a JSON list or JSON-lines file of alpaca records (or every such file in a directory)."""
    return [r for f in alpaca_files(path) for r in _load_alpaca_file(f)]


def _load_alpaca_file(p: Path) -> list[dict[str, str]]:
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return [validate_record(r, f"{p}[{i}]") for i, r in enumerate(items)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{p}:{n}: invalid JSON: {exc.msg}") from None
        out.append(validate_record(obj, f"{p}:{n}"))
    return out


def tokenize_record(
    tokenizer, rec: dict[str, str], cutoff_len: int, train_on_inputs: bool = False
) -> dict[str, list[int]]:
    """BOS + prompt + response (+ EOS when it fits), cut to ``cutoff_len``.

    With ``train_on_inputs=False`` the prompt's labels are IGNORE_INDEX so only the response is
    learned (KnowLM: the prompt length is that of BOS + prompt, without EOS).
    """
    # A record may carry its format's own prompt (IEPile: OneKE's chat wrapper); else alpaca's.
    prompt = rec.get("prompt") or build_prompt(rec["instruction"], rec.get("input", ""))
    full_ids = tokenizer(prompt + rec["output"], add_special_tokens=True)["input_ids"][:cutoff_len]
    if len(full_ids) < cutoff_len and full_ids[-1] != tokenizer.eos_token_id:
        full_ids = full_ids + [tokenizer.eos_token_id]
    labels = list(full_ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        labels[:n_prompt] = [IGNORE_INDEX] * min(n_prompt, len(labels))
    return {"input_ids": full_ids, "labels": labels}


def tokenize_records(
    tokenizer, records: Iterable[dict[str, str]], cutoff_len: int, train_on_inputs: bool = False
) -> list[dict[str, list[int]]]:
    rows = [tokenize_record(tokenizer, r, cutoff_len, train_on_inputs) for r in records]
    # A record whose response was cut away entirely teaches nothing: drop it.
    return [r for r in rows if any(x != IGNORE_INDEX for x in r["labels"][1:])]
