"""Extraction schemas: the accepted shapes, and the check of model output against them.

A schema names the labels a request may return:

* NER / RE: a list of labels (``["人物", "地理位置"]``), or IEPile's ``{label: description}``;
* EE: ``{event type: [roles]}``, a list of event types (any role accepted), or IEPile's list of
  ``{"event_type": …, "arguments": [roles]}`` objects.

``normalize_schema`` turns any of these into ``list[str]`` (NER/RE) or ``dict[str, list[str] | None]``
(EE; None = roles unconstrained). ``check_items`` keeps the items whose labels are in the schema —
matching exactly, else after NFKC + case folding, and then writing the schema's own spelling — and
reports the rest as dropped labels.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

from knowlm_ray.errors import UserError
from knowlm_ray.ie.parsers import TASKS

Schema = list[str] | dict[str, list[str] | None]


class SchemaError(UserError, ValueError):
    """A schema the caller got wrong (a 400 for the HTTP route); the message says what."""


def _fold(label: str) -> str:
    return unicodedata.normalize("NFKC", label).strip().casefold()


def _labels(values: Iterable[Any], what: str) -> list[str]:
    out, seen = [], {}
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise SchemaError(f"{what}: every label must be a non-empty string, got {v!r}")
        key = _fold(v)
        if key in seen:
            raise SchemaError(f"{what}: label {v!r} is given twice (as {seen[key]!r})")
        seen[key] = v
        out.append(v.strip())
    return out


def normalize_schema(task: str, schema: Any) -> Schema:
    """The canonical form of ``schema`` for ``task``; raises SchemaError naming the problem."""
    if task not in TASKS:
        raise SchemaError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if isinstance(schema, str):
        schema = [schema]
    if not schema or not isinstance(schema, (list, dict)):
        raise SchemaError("schema must be a non-empty list of labels (or an object of them)")
    if task != "ee":
        return _labels(schema, "schema")  # a dict gives its keys: IEPile's {label: description}
    if isinstance(schema, dict):
        types = _labels(schema, "schema")
        out: dict[str, list[str] | None] = {}
        for t, key in zip(types, schema):
            roles = schema[key]
            if roles is None or isinstance(roles, str):
                out[t] = None  # {type: "description"} (IEPile's described schema): any role
            elif isinstance(roles, list):
                out[t] = _labels(roles, f"schema[{t!r}]")
            else:
                raise SchemaError(f"schema[{t!r}] must be a list of argument roles")
        return out
    out = {}
    for i, item in enumerate(schema):
        if isinstance(item, str):
            t, roles = item, None
        elif isinstance(item, dict) and isinstance(item.get("event_type"), str):
            t = item["event_type"]
            raw = item.get("arguments", item.get("role_list"))
            roles = None if raw is None else _labels(raw if isinstance(raw, list) else [raw], f"schema[{i}].arguments")
        else:
            raise SchemaError(f"schema[{i}] must be an event type or {{'event_type', 'arguments'}}")
        if not t.strip():
            raise SchemaError(f"schema[{i}]: empty event type")
        if t.strip() in out or _fold(t) in {_fold(k) for k in out}:
            raise SchemaError(f"schema: event type {t!r} is given twice")
        out[t.strip()] = roles
    return out


# task -> (the item field holding its label, what a dropped label is called)
_LABEL_FIELD = {"ner": ("type", "entity type"), "re": ("relation", "relation"), "ee": ("type", "event type")}


class SchemaChecker:
    """Keeps items whose labels are in the schema; counts what it drops."""

    def __init__(self, task: str, schema: Schema):
        self.task = task
        self.schema = schema
        self._labels = {_fold(x): x for x in schema}
        self._roles = (
            {t: ({_fold(r): r for r in roles} if roles is not None else None) for t, roles in schema.items()}
            if isinstance(schema, dict)
            else {}
        )
        self.dropped: dict[tuple, int] = {}

    def _drop(self, kind: str, label: str, event: str | None = None) -> None:
        key = (kind, label, event)
        self.dropped[key] = self.dropped.get(key, 0) + 1

    def label(self, label: str) -> str | None:
        if label in self.schema:
            return label
        return self._labels.get(_fold(label))

    def check(self, items: Iterable[dict]) -> list[dict]:
        field, kind = _LABEL_FIELD[self.task]
        kept = []
        for it in items:
            lab = self.label(it[field])
            if lab is None:
                self._drop(kind, it[field])
                continue
            if self.task != "ee":
                kept.append({**it, field: lab})
                continue
            roles = self._roles.get(lab)
            args = []
            for a in it["arguments"]:
                role = a["role"] if roles is None else (roles.get(_fold(a["role"])))
                if role is None:
                    self._drop("role", a["role"], lab)
                    continue
                args.append({**a, "role": role})
            kept.append({**it, "type": lab, "arguments": args})
        return kept

    def report(self) -> list[dict]:
        """Dropped labels, first seen first: ``{"kind", "label", "count"}`` (+ ``"event"`` for roles)."""
        out = []
        for (kind, label, event), n in self.dropped.items():
            d = {"kind": kind, "label": label, "count": n}
            if event is not None:
                d["event"] = event
            out.append(d)
        return out


def check_items(task: str, items: Iterable[dict], schema: Any) -> tuple[list[dict], list[dict]]:
    """(items whose labels are in ``schema``, dropped-label report)."""
    checker = SchemaChecker(task, normalize_schema(task, schema))
    kept = checker.check(items)
    return kept, checker.report()
