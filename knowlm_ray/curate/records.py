"""Instruction records as curation reads them: alpaca, IEPile and ShareGPT-style, one view.

Every record keeps its own shape on output (``kept.jsonl`` holds the line as read); the selectors
look at a *view* of three strings:

* alpaca ``{"instruction", "input"?, "output"}`` (``knowlm kg2instruct`` writes these): as is.
* IEPile ``{"instruction": "<OneKE JSON: instruction, schema, input>", "output" | "label"}``:
  the inner instruction, the inner input (the text), the output (or the label as JSON).
* ShareGPT ``{"conversations": [{"from": "human"|"gpt"|..., "value"}]}`` or OpenAI-style
  ``{"messages": [{"role": "user"|"assistant"|..., "content"}]}``: the user turns joined by a
  newline as instruction, the assistant turns as output, input empty (system turns are skipped).

A line that is not JSON, or a record of none of these shapes, is malformed: quarantined with its
file, line and the reason, never fatal.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_ray.alpaca import is_iepile_record
from knowlm_ray.errors import MissingPathError

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "bot", "chatgpt")
SKIPPED_ROLES = ("system",)


class Malformed(ValueError):
    """A record curation cannot read; the message is the quarantine reason."""


def input_files(paths: list[str]) -> list[Path]:
    """The files to read, in order: each file as given, a directory's ``*.json`` / ``*.jsonl``
    sorted by name."""
    out = []
    for spec in paths:
        p = Path(spec)
        if p.is_dir():
            found = sorted([*p.glob("*.json"), *p.glob("*.jsonl")])
            if not found:
                raise MissingPathError(f"inputs: no .json / .jsonl files in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MissingPathError(f"inputs: {p} does not exist")
    return out


def _turns(turns: Any, role_key: str, text_key: str) -> dict[str, str]:
    if not isinstance(turns, list) or not turns:
        raise Malformed(f"{role_key!r} turns: expected a non-empty list")
    user, assistant = [], []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get(text_key), str) or not isinstance(t.get(role_key), str):
            raise Malformed(f"turn {i}: expected an object with string {role_key!r} and {text_key!r}")
        role = t[role_key].lower()
        if role in USER_ROLES:
            user.append(t[text_key])
        elif role in ASSISTANT_ROLES:
            assistant.append(t[text_key])
        elif role not in SKIPPED_ROLES:
            raise Malformed(f"turn {i}: unknown {role_key} {t[role_key]!r}")
    if not user or not assistant:
        raise Malformed("a conversation needs a user turn and an assistant turn")
    return {"instruction": "\n".join(user), "input": "", "output": "\n".join(assistant)}


def view(obj: Any) -> tuple[str, dict[str, str]]:
    """``(format, {instruction, input, output})`` of a record; raises Malformed."""
    if not isinstance(obj, dict):
        raise Malformed(f"expected a JSON object, got {type(obj).__name__}")
    if is_iepile_record(obj):
        inner = json.loads(obj["instruction"])
        out = obj.get("output", obj.get("label"))
        if not isinstance(out, str):
            out = json.dumps(out, ensure_ascii=False)
        ins, text = inner.get("instruction"), inner.get("input")
        if not isinstance(ins, str) or not isinstance(text, str):
            raise Malformed("IEPile instruction JSON: 'instruction' and 'input' must be strings")
        return "iepile", {"instruction": ins, "input": text, "output": out}
    if "conversations" in obj:
        return "sharegpt", _turns(obj["conversations"], "from", "value")
    if "messages" in obj:
        return "sharegpt", _turns(obj["messages"], "role", "content")
    if "instruction" in obj or "output" in obj:
        for key in ("instruction", "output"):
            if not isinstance(obj.get(key), str):
                raise Malformed(f"alpaca record: field {key!r} is missing or not a string")
        if not isinstance(obj.get("input", ""), str):
            raise Malformed("alpaca record: field 'input' is not a string")
        return "alpaca", {"instruction": obj["instruction"], "input": obj.get("input", ""), "output": obj["output"]}
    raise Malformed("not an alpaca, IEPile or ShareGPT record (no instruction/output, conversations or messages)")


def _json_list(text: str) -> Iterator[tuple[int, str, Any, str | None]]:
    """``(line, raw, object, error)`` per element of a JSON list; a syntax error ends the list."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield line, text[i : i + 2000], None, f"invalid JSON: {exc.msg} (the rest of the list is skipped)"
            return
        # an element of a list is re-serialised compactly: kept.jsonl holds one record per line
        yield line, json.dumps(obj, ensure_ascii=False), obj, None
        i = end


def plan_ranges(files: list[Path], target_bytes: int) -> list[tuple[int, str, int, int, int]]:
    """Read tasks ``(file index, path, start byte, end byte, line number at start)``: a .jsonl
    file is cut at the first line start after every ``target_bytes`` (one pass over it on the
    driver, counting newlines), a JSON list is one task."""
    out = []
    for index, f in enumerate(files):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(4096).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if head.startswith(b"[") or size <= target_bytes:
                out.append((index, str(f), 0, size, 1))
                continue
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                start, line = 0, 1
                while start < size:
                    nl = mm.find(b"\n", min(start + target_bytes, size) - 1)
                    end = size if nl < 0 else nl + 1
                    out.append((index, str(f), start, end, line))
                    line += mm[start:end].count(b"\n")
                    start = end
    return out


def iter_file(
    path: Path, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, str, Any, str | None]]:
    """``(line, raw, object, error)`` per record of a .jsonl file's byte range ``[start, end)``
    (which starts on a line; ``first_line`` is that line's number; blank lines skipped) or of a
    file holding one JSON list; ``error`` set (and object None) for a line that is not JSON."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read((end if end is not None else path.stat().st_size) - start)
    text = data.decode("utf-8", errors="replace")
    if start == 0:
        text = text.removeprefix("\ufeff")
        if text.lstrip().startswith("["):
            yield from _json_list(text)
            return
    for n, line in enumerate(text.split("\n"), first_line):
        raw = line.rstrip("\r")
        if not raw.strip():
            continue
        try:
            yield n, raw, json.loads(raw), None
        except json.JSONDecodeError as exc:
            yield n, raw, None, f"invalid JSON: {exc.msg}"


def map_strings(obj: Any, fn) -> Any:
    """``obj`` with ``fn`` applied to every string value (keys untouched); an IEPile record's
    instruction JSON string is decoded, mapped and encoded again so its keys stay intact."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [map_strings(v, fn) for v in obj]
    if isinstance(obj, dict):
        if is_iepile_record(obj):
            inner = map_strings(json.loads(obj["instruction"]), fn)
            rest = {k: map_strings(v, fn) for k, v in obj.items() if k != "instruction"}
            return {"instruction": json.dumps(inner, ensure_ascii=False), **rest}
        return {k: map_strings(v, fn) for k, v in obj.items()}
    return obj
