"""Precision / recall / F1 of IE records against gold IE records.

    knowlm ie-score --task ner|re|ee --gold G.jsonl --pred P.jsonl [--match set|count]

Units: NER ``(type, text)``; RE ``(relation, head, tail)``; EE scored twice — triggers
``(event type, trigger)`` and arguments ``(event type, role, text)``. Every string is normalised
(NFKC, trimmed, Latin letters case-folded) before comparison, which IEPile's exact,
case-sensitive matching does not do. ``set`` matching de-duplicates both sides per document;
``count`` matching pairs units one-to-one as multisets (a unit predicted twice but annotated once
is one hit and one false positive).

Predictions are joined to gold by ``id`` (a prediction without an id by its ``text``). A gold
document without a usable prediction contributes all its gold units as misses. The output counts
``predicted`` (gold documents with a readable prediction), ``missing`` (gold documents with no
prediction line at all), ``unparseable`` (prediction lines that are not a readable IE record: not
JSON, not an object, nothing to join on, an ``error`` record, a task field that is not a list; a
broken line whose ``id`` can still be read makes its document unparseable, not missing),
``duplicates`` (later lines for an id already seen: ignored), ``extra`` (ids not in gold) and
``invalid_items`` (malformed items inside a readable prediction: skipped).
Scores are fractions in [0, 1]; per-type figures are keyed by the gold spelling of the label.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from knowlm_ray.alpaca import RecordError
from knowlm_ray.ie.parsers import FIELD, TASKS

MATCHES = ("set", "count")
KINDS = {"ner": ("entity",), "re": ("relation",), "ee": ("trigger", "argument")}


@lru_cache(maxsize=4096)
def _is_latin(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith("LATIN")


def normalize(s: str) -> str:
    """NFKC, trimmed, Latin letters case-folded (other scripts untouched)."""
    s = unicodedata.normalize("NFKC", s).strip()
    return "".join(c.casefold() if _is_latin(c) else c for c in s)


class _BadItem(ValueError):
    pass


def _text(item: dict, key: str) -> str:
    v = item.get(key)
    if not isinstance(v, str) or not v.strip():
        raise _BadItem(f"{key!r} is missing or not a non-empty string")
    return v


def units(task: str, record: dict, on_bad=None) -> dict[str, list[tuple[str, ...]]]:
    """The scoring units of ``record`` for ``task`` (raw strings; first element = the type).

    A malformed item raises ValueError, or, with ``on_bad``, is reported to it and skipped.
    """
    out: dict[str, list[tuple[str, ...]]] = {k: [] for k in KINDS[task]}
    items = record.get(FIELD[task], [])
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ValueError(f"field {FIELD[task]!r} is not a list")
    for i, it in enumerate(items):
        try:
            if not isinstance(it, dict):
                raise _BadItem("not an object")
            if task == "ner":
                out["entity"].append((_text(it, "type"), _text(it, "text")))
            elif task == "re":
                out["relation"].append((_text(it, "relation"), _text(it, "head"), _text(it, "tail")))
            else:
                etype = _text(it, "type")
                trig = (etype, _text(it, "trigger"))
                args = it.get("arguments") or []
                if not isinstance(args, list):
                    raise _BadItem("'arguments' is not a list")
                arg_units = []
                for a in args:
                    if not isinstance(a, dict):
                        raise _BadItem("an argument is not an object")
                    arg_units.append((etype, _text(a, "role"), _text(a, "text")))
                out["trigger"].append(trig)
                out["argument"].extend(arg_units)
        except _BadItem as exc:
            if on_bad is None:
                raise ValueError(f"{FIELD[task]}[{i}]: {exc}") from None
            on_bad(i, str(exc))
    return out


def _norm_units(us: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [tuple(normalize(x) for x in u) for u in us]


def _prf(tp: int, pred: int, gold: int) -> dict[str, Any]:
    """seqeval's arithmetic: 0 for an empty denominator, F1 = 2PR / (P + R)."""
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "pred": pred, "gold": gold}


class Tally:
    """tp / pred / gold counts per (kind, type) over documents."""

    def __init__(self, task: str, match: str = "set"):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if match not in MATCHES:
            raise ValueError(f"unknown match {match!r} (expected one of {', '.join(MATCHES)})")
        self.task, self.match = task, match
        self.counts = {k: {} for k in KINDS[task]}  # kind -> norm type -> [tp, pred, gold]
        self.names: dict[str, str] = {}  # norm type -> display spelling (gold first)

    def add(self, gold: dict[str, list[tuple[str, ...]]], pred: dict[str, list[tuple[str, ...]]]) -> None:
        """One document's raw units (``units()`` output; pred may be empty)."""
        for kind in KINDS[self.task]:
            for source in (gold.get(kind, []), pred.get(kind, [])):
                for u in source:
                    self.names.setdefault(normalize(u[0]), u[0].strip())
            g, p = Counter(_norm_units(gold.get(kind, []))), Counter(_norm_units(pred.get(kind, [])))
            if self.match == "set":
                g, p = Counter(set(g)), Counter(set(p))
            table = self.counts[kind]
            for u, n in g.items():
                table.setdefault(u[0], [0, 0, 0])[2] += n
            for u, n in p.items():
                row = table.setdefault(u[0], [0, 0, 0])
                row[1] += n
                row[0] += min(n, g.get(u, 0))

    def scores(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, table in self.counts.items():
            tp, pred, gold = (sum(row[i] for row in table.values()) for i in range(3))
            per_type = {self.names[t]: _prf(*table[t]) for t in sorted(table, key=lambda t: self.names[t])}
            out[kind] = {"micro": _prf(tp, pred, gold), "per_type": per_type}
        return out


# ----------------------------------------------------------------------------------- files
def _read_lines(path: str | Path) -> Iterable[tuple[int, str]]:
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"file not found: {p}")
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                yield n, line


def read_gold(path: str | Path, task: str) -> list[dict]:
    """Gold records (``id`` + the task's list); any bad line raises RecordError naming ``file:line``."""
    out, seen = [], {}
    for n, line in _read_lines(path):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
                raise ValueError("field 'id' is missing")
            units(task, rec)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{n}: invalid JSON: {exc.msg}") from None
        except ValueError as exc:
            raise RecordError(f"{path}:{n}: {exc}") from None
        key = str(rec["id"])
        if key in seen:
            raise RecordError(f"{path}:{n}: duplicate id {key!r} (first at line {seen[key]})")
        seen[key] = n
        out.append(rec)
    return out


def _salvage_id(line: str) -> str | None:
    """The ``id`` of a broken JSON line, read leniently (the rest of the line is not scored)."""
    from knowlm_ray.ie.parsers import read_json_values

    values, _ = read_json_values(line)
    key = values[0].get("id") if values and isinstance(values[0], dict) else None
    return str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else None


def score_records(task: str, gold: list[dict], pred_lines: Iterable[Any], match: str = "set") -> dict[str, Any]:
    """Score predictions (parsed records, or raw JSON strings / anything unreadable) against gold."""
    tally = Tally(task, match)
    by_id: dict[str, Any] = {}
    by_text: dict[str, str] = {str(g.get("text")): str(g["id"]) for g in gold if isinstance(g.get("text"), str)}
    stats = {"unparseable": 0, "duplicates": 0, "extra": 0, "invalid_items": 0}
    bad_ids: set[str] = set()
    for line in pred_lines:
        rec = line
        if isinstance(line, str):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                stats["unparseable"] += 1
                key = _salvage_id(line)  # a cut-off line still says whose prediction it was
                if key is not None and key not in by_id:
                    bad_ids.add(key)
                continue
        if not isinstance(rec, dict):
            stats["unparseable"] += 1
            continue
        key = rec.get("id")
        key = (
            str(key)
            if isinstance(key, (str, int)) and not isinstance(key, bool)
            else by_text.get(rec.get("text"))
            if isinstance(rec.get("text"), str)
            else None
        )
        if key is None:
            stats["unparseable"] += 1
            continue
        if key in by_id or key in bad_ids:
            stats["duplicates"] += 1
            continue
        if rec.get("error"):
            bad_ids.add(key)
            stats["unparseable"] += 1
            continue
        try:
            bad: list = []
            by_id[key] = units(task, rec, on_bad=lambda i, msg, bad=bad: bad.append(i))
            stats["invalid_items"] += len(bad)
        except ValueError:
            bad_ids.add(key)  # e.g. the task's field is not a list: nothing usable
            stats["unparseable"] += 1
    gold_ids = {str(g["id"]) for g in gold}
    missing = 0
    for g in gold:
        key = str(g["id"])
        missing += key not in by_id and key not in bad_ids
        tally.add(units(task, g), by_id.get(key, {}))
    stats["extra"] = sum(k not in gold_ids for k in list(by_id) + list(bad_ids))
    result: dict[str, Any] = {
        "task": task,
        "match": match,
        "documents": len(gold),
        "predicted": sum(str(g["id"]) in by_id for g in gold),
        "missing": missing,
        **stats,
    }
    scores = tally.scores()
    if task == "ee":
        result.update(scores)
    else:
        result.update(scores[KINDS[task][0]])
    return result


def score_files(task: str, gold_path: str | Path, pred_path: str | Path, match: str = "set") -> dict[str, Any]:
    gold = read_gold(gold_path, task)
    return score_records(task, gold, (line for _, line in _read_lines(pred_path)), match)
