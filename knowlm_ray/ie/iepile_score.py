"""IEPile's evaluation of a result file, with IEPile's rules and keys.

    knowlm ie-score --iepile RESULTS.jsonl --task ner|re|ee [--match normal|set]

Each line is an IEPile test record with the model's answer added: ``id``, ``source`` (optional),
``instruction`` (the OneKE instruction JSON string), ``label`` (the gold items as a JSON string:
NER ``[{"entity", "entity_type"}]``, RE ``[{"head", "relation", "tail"}]``, EE ``[{"event_type",
"event_trigger", "arguments": [{"argument", "role"}]}]``) and ``output`` (the answer). As IEPile's
``eval_func.py`` does: lines are grouped by source + id (one text asked in several label
batches), each answer is read with ``json.loads`` and one that is not a JSON object counts one
error (``错误数``) and adds nothing, tuples match exactly (case-sensitive, no normalisation),
``normal`` matching counts repeats (multisets) and ``set`` matching drops them per text, and
micro P / R / F1 are on a 0-100 scale rounded to 2 places. EE is scored twice: events
``(type, trigger)`` and arguments ``(type, argument, role)``.

The output is IEPile's shape: ``{"total": {...}, "<source>": {...}, ...}``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knowlm_ray.errors import InputError
from knowlm_ray.ie.oneke import read_answer

TASKS = ("ner", "re", "ee")
MATCHES = ("normal", "set")
ERRORS = "错误数"  # IEPile's key for the number of unreadable answers


class IEPileFileError(InputError):
    """A result file or line that cannot be scored: names the file and line (a user error)."""


def gold_units(task: str, label: list[dict[str, Any]]) -> dict[str, list[tuple]]:
    """IEPile's gold tuples per kind (``convert_kg``)."""
    if task == "ner":
        return {"": [(x["entity"], x["entity_type"]) for x in label]}
    if task == "re":
        return {"": [(x.get("head", ""), x.get("relation", ""), x.get("tail", "")) for x in label]}
    events = [(x["event_type"], x.get("event_trigger", "")) for x in label]
    args = [(x["event_type"], a["argument"], a["role"]) for x in label for a in x.get("arguments", [])]
    return {"event_": events, "argument_": args}


def pred_units(task: str, items: Iterable[dict[str, Any]]) -> dict[str, list[tuple]]:
    """The same tuples from the items ``oneke.read_answer`` reads from an answer."""
    items = list(items)
    if task == "ner":
        return {"": [(x["text"], x["type"]) for x in items]}
    if task == "re":
        return {"": [(x["head"], x["relation"], x["tail"]) for x in items]}
    return {
        "event_": [(x["type"], x["trigger"]) for x in items],
        "argument_": [(x["type"], a["text"], a["role"]) for x in items for a in x["arguments"]],
    }


class Counts:
    """Micro counts of one group (all lines, or one source)."""

    def __init__(self, kinds: Iterable[str], match: str):
        self.match = match
        self.errors = 0
        self.n = {k: [0, 0, 0] for k in kinds}  # kind -> [true positives, predicted, gold]

    def add(self, gold: dict[str, list[tuple]], pred: dict[str, list[tuple]]) -> None:
        for kind, counts in self.n.items():
            g, p = Counter(gold[kind]), Counter(pred[kind])
            if self.match == "set":
                g, p = Counter(set(g)), Counter(set(p))
            counts[0] += sum((g & p).values())
            counts[1] += sum(p.values())
            counts[2] += sum(g.values())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {ERRORS: self.errors}
        for kind, (tp, n_pred, n_gold) in self.n.items():
            p = tp / n_pred if n_pred else 0.0
            r = tp / n_gold if n_gold else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            out.update({f"{kind}P": round(p * 100, 2), f"{kind}R": round(r * 100, 2), f"{kind}F1": round(f1 * 100, 2)})
        return out


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """Lines grouped by source + id, answers in file order (IEPile's ``mapper``)."""
    groups: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
                key = str(rec.get("source", "None")) + str(rec["id"])
                output = rec["output"]
                if key not in groups:
                    label = json.loads(rec["label"]) if isinstance(rec["label"], str) else rec["label"]
                    if not isinstance(label, list):
                        raise TypeError("label is not a list")
                    groups[key] = {"source": str(rec.get("source", "None")), "label": label, "outputs": []}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                raise IEPileFileError(f"{where}: not an IEPile result line ({what})") from None
            if not isinstance(output, str):
                raise IEPileFileError(f"{where}: output is not a string")
            groups[key]["outputs"].append(output)
    return groups


def score_iepile(path: str | Path, task: str, match: str = "normal") -> dict[str, Any]:
    """IEPile's result for ``path``: ``total`` and one entry per source, sources sorted."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if match not in MATCHES:
        raise InputError(f"unknown match mode {match!r} (expected one of {', '.join(MATCHES)})")
    path = Path(path)
    if not path.is_file():
        raise IEPileFileError(f"result file not found: {path}")
    kinds = ("event_", "argument_") if task == "ee" else ("",)
    total = Counts(kinds, match)
    by_source: dict[str, Counts] = {}
    for key, group in _read(path).items():
        src = by_source.setdefault(group["source"], Counts(kinds, match))
        items: list[dict[str, Any]] = []
        for answer in group["outputs"]:
            ok, got = read_answer(task, answer)
            if not ok:
                total.errors += 1
                src.errors += 1
            items.extend(got)
        try:
            gold = gold_units(task, group["label"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise IEPileFileError(f"{path}: the label of id {key!r} is not a {task.upper()} label ({exc})") from None
        pred = pred_units(task, items)
        total.add(gold, pred)
        src.add(gold, pred)
    out = {"total": total.result()}
    for name in sorted(by_source):
        out[name] = by_source[name].result()
    return out
