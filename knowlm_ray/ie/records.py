"""IE records and label schemas on disk: reading and checking them.

An IE record is ``{"id", "text", "lang"?, "entities", "relations", "events"}`` with every span
verbatim in the text; a label schema is ``{"zh": {"ner": [...], "re": [...], "ee": {type: [roles]},
"hard_negatives"?: {label: [labels]}}, "en": {...}}``. Bad input raises ``RecordError`` naming
the file and line (or is reported per line by ``iter_ie_records``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_ray.alpaca import RecordError
from knowlm_ray.ie.templates import LANGS, guess_lang


def _check_span(rec: dict, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing or not a non-empty string")
    if value not in rec["text"]:
        raise ValueError(f"{what} {value!r} does not occur in the text")
    return value


def _check_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing or not a non-empty string")
    return value


def _list(obj: dict, key: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} is not a list")
    return value


def validate_ie_record(obj: Any) -> dict:
    """Check one IE record (every span verbatim in the text); returns it with all lists present."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "text"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise ValueError(f"field {key!r} is missing or not a non-empty string")
    lang = obj.get("lang", guess_lang(obj["text"]))
    if lang not in LANGS:
        raise ValueError(f"field 'lang' must be one of {LANGS}, got {lang!r}")
    rec = {"id": obj["id"], "lang": lang, "text": obj["text"], "entities": [], "relations": [], "events": []}
    for i, e in enumerate(_list(obj, "entities")):
        if not isinstance(e, dict):
            raise ValueError(f"entities[{i}] is not an object")
        rec["entities"].append(
            {
                "text": _check_span(rec, e.get("text"), f"entities[{i}].text"),
                "type": _check_label(e.get("type"), f"entities[{i}].type"),
            }
        )
    for i, r in enumerate(_list(obj, "relations")):
        if not isinstance(r, dict):
            raise ValueError(f"relations[{i}] is not an object")
        rec["relations"].append(
            {
                "head": _check_span(rec, r.get("head"), f"relations[{i}].head"),
                "relation": _check_label(r.get("relation"), f"relations[{i}].relation"),
                "tail": _check_span(rec, r.get("tail"), f"relations[{i}].tail"),
            }
        )
    for i, ev in enumerate(_list(obj, "events")):
        if not isinstance(ev, dict):
            raise ValueError(f"events[{i}] is not an object")
        args = []
        for j, a in enumerate(_list(ev, "arguments")):
            if not isinstance(a, dict):
                raise ValueError(f"events[{i}].arguments[{j}] is not an object")
            args.append(
                {
                    "role": _check_label(a.get("role"), f"events[{i}].arguments[{j}].role"),
                    "text": _check_span(rec, a.get("text"), f"events[{i}].arguments[{j}].text"),
                }
            )
        rec["events"].append(
            {
                "type": _check_label(ev.get("type"), f"events[{i}].type"),
                "trigger": _check_span(rec, ev.get("trigger"), f"events[{i}].trigger"),
                "arguments": args,
            }
        )
    return rec


def iter_ie_records(path: str | Path, schema: dict | None = None) -> Iterator[tuple[int, str, dict | None, str | None]]:
    """``(line number, line, record, None)`` for each good line of an IE records file and
    ``(line number, line, None, reason)`` for each bad one: invalid UTF-8 or JSON, nesting deeper
    than the parser goes, a bad record, a duplicate id and, with ``schema``, a language or label
    outside it. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"IE records not found: {p}")
    seen: dict[str, int] = {}
    with open(p, "rb") as fh:  # decoded line by line: a bad byte costs its line, not the file
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield (
                    n,
                    raw.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                    None,
                    f"not valid UTF-8 (byte {exc.start})",
                )
                continue
            try:
                obj = json.loads(line)
                json.dumps(obj, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\\udXXX escape)
            except RecursionError:
                yield n, line, None, "invalid JSON: nested too deeply"
                continue
            except UnicodeEncodeError:
                yield n, line, None, "not valid UTF-8 (an unpaired surrogate escape)"
                continue
            except json.JSONDecodeError as exc:
                yield n, line, None, f"invalid JSON: {exc.msg}"
                continue
            try:
                rec = validate_ie_record(obj)
                if schema is not None:
                    schema_section(rec, schema)
                if rec["id"] in seen:
                    raise ValueError(f"duplicate id {rec['id']!r} (first at line {seen[rec['id']]})")
            except (ValueError, TypeError) as exc:
                yield n, line, None, str(exc)
                continue
            seen[rec["id"]] = n
            yield n, line, rec, None


def load_ie_records(path: str | Path) -> list[dict]:
    """Read IE records (JSON lines); any bad line raises RecordError naming ``file:line``."""
    records = []
    for n, _, rec, err in iter_ie_records(path):
        if err:
            raise RecordError(f"{Path(path)}:{n}: {err}")
        records.append(rec)
    return records


def read_json_object(path: str | Path, what: str = "schema") -> dict:
    """The JSON object in ``path``; RecordError naming the file when it is missing, not JSON or
    not an object."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{what} not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{p}: expected a JSON object")
    return data


def load_schema(path: str | Path) -> dict:
    """Read the label schema; a wrong shape raises RecordError naming the file and the key."""
    p = Path(path)
    schema = read_json_object(p)
    if not schema or not set(schema) <= set(LANGS):
        raise RecordError(f"{p}: expected an object keyed by language ({', '.join(LANGS)})")

    def is_labels(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(s, str) and s for s in x)

    for lang, s in schema.items():
        if not isinstance(s, dict):
            raise RecordError(f"{p}: {lang} is not an object")
        for key in ("ner", "re"):
            if not is_labels(s.get(key)):
                raise RecordError(f"{p}: {lang}.{key} must be a list of label strings")
        ee = s.get("ee")
        if not isinstance(ee, dict) or not all(is_labels(roles) for roles in ee.values()):
            raise RecordError(f"{p}: {lang}.ee must map each event type to a list of roles")
        hard = s.get("hard_negatives", {})
        if not isinstance(hard, dict) or not all(is_labels(v) for v in hard.values()):
            raise RecordError(f"{p}: {lang}.hard_negatives must map a label to a list of labels")
    return schema


def _check_in_schema(rec: dict, s: dict) -> None:
    bad = (
        [f"entity type {e['type']!r}" for e in rec["entities"] if e["type"] not in s["ner"]]
        + [f"relation {r['relation']!r}" for r in rec["relations"] if r["relation"] not in s["re"]]
        + [f"event type {ev['type']!r}" for ev in rec["events"] if ev["type"] not in s["ee"]]
        + [
            f"role {a['role']!r} of {ev['type']!r}"
            for ev in rec["events"]
            if ev["type"] in s["ee"]
            for a in ev["arguments"]
            if a["role"] not in s["ee"][ev["type"]]
        ]
    )
    if bad:
        raise ValueError(f"record {rec['id']!r}: {', '.join(bad)} not in the {rec['lang']} schema")


def schema_section(rec: dict, schema: dict) -> tuple[str, dict]:
    """(language, schema section) of a record whose labels are all in that section."""
    lang = rec.get("lang") or guess_lang(rec["text"])
    if lang not in schema:
        raise ValueError(f"record {rec['id']!r}: no {lang!r} section in the schema")
    _check_in_schema({**rec, "lang": lang}, schema[lang])
    return lang, schema[lang]
