"""What an extraction answer must look like, as a constraint for constrained decoding.

``constraint_for(answer_kind, task, labels, text, mentions)`` maps one prompt of an extraction
plan (``ie.formats``: its answer kind and label batch, the text chunk it asks about) to a
``generation.constraints.ConstraintSpec``:

* ``oneke-json`` — OneKE's answer object (ie-formats.md §1): exactly the batch's labels as keys,
  in order, all required, no others; NER ``[mention]``, RE ``[{"subject", "object"}]``, EE
  ``[{"trigger", "arguments": {role: value | [values]}}]`` (every role of the type, in order;
  any role when the schema names none), EET ``[trigger]``.
* ``alpaca-json`` — this project's JSON answers (``templates.render_output``): an object whose
  keys are labels of the batch (each optional, in the batch's order, none other), the same value
  shapes with the roles optional; ``{}`` is the none-answer.
* ``tuple`` — the tuple form's grammar (``(mention,type)``, ``(head,relation,tail)``,
  ``(trigger,type,[(argument,role),...])`` lines, or the none-answer ``无`` / ``None``).

``mentions="span"``: every mention (entity, subject, object, trigger, argument) must be a
substring of ``text``; EE's ``"NAN"`` for a missing argument is then not a mention the text holds,
so a missing argument is an empty list there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from knowlm_ray.generation.constraints import SPAN_KEY, ConstraintSpec, TupleShape
from knowlm_ray.ie.templates import NONE_ANSWER

MENTIONS = ("any", "span")


def _labels(labels: Any) -> list[str]:
    return list(labels) if isinstance(labels, (dict, list, tuple)) else [labels]


def _mention(span: bool) -> dict:
    return {"type": "string", SPAN_KEY: True} if span else {"type": "string"}


def _obj(props: dict, required: Sequence[str]) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def _roles(labels: Any, label: str) -> list[str] | None:
    roles = labels.get(label) if isinstance(labels, dict) else None
    return list(roles) if isinstance(roles, (list, tuple)) else None


def _item(task: str, labels: Any, label: str, span: bool, all_roles: bool) -> dict:
    m = _mention(span)
    if task in ("ner", "eet"):
        return m
    if task == "re":
        return _obj({"subject": m, "object": m}, ["subject", "object"])
    value = {"anyOf": [m, {"type": "array", "items": m}]}
    roles = _roles(labels, label)
    if roles is None:
        arguments: dict = {"type": "object", "additionalProperties": value}
    else:
        arguments = _obj({r: value for r in roles}, roles if all_roles else [])
    return _obj({"trigger": m, "arguments": arguments}, ["trigger", "arguments"])


def answer_schema(kind: str, task: str, labels: Any, span: bool = False) -> dict:
    """The JSON schema of a ``kind`` answer (oneke-json or alpaca-json) for one label batch."""
    task = task.lower()
    if task not in ("ner", "re", "ee", "eet"):
        raise ValueError(f"no answer schema for task {task!r}")
    names = _labels(labels)
    oneke = kind == "oneke-json"
    if not oneke and kind != "alpaca-json":
        raise ValueError(f"answer kind {kind!r} has no JSON schema")
    props = {n: {"type": "array", "items": _item(task, labels, n, span, oneke)} for n in names}
    return _obj(props, names if oneke else [])


def tuple_shape(task: str, labels: Any, lang: str = "zh", sep: str = ",") -> TupleShape:
    """The tuple form of ``templates.render_output`` (and ZhiXi's ``(head, relation, tail)``
    with ``sep=", "``) for one label batch."""
    names = tuple(_labels(labels))
    none = NONE_ANSWER.get(lang, NONE_ANSWER["en"])
    if task == "ner":
        return TupleShape(("span", names), sep, none)
    if task == "re":
        return TupleShape(("span", names, "span"), sep, none)
    if task == "ee":
        roles: list[str] = []
        for n in names:
            roles.extend(r for r in (_roles(labels, n) or []) if r not in roles)
        inner = TupleShape(("span", tuple(roles) if roles else "text"), ",")
        return TupleShape(("span", names, ("list", inner)), sep, none)
    raise ValueError(f"no tuple form for task {task!r}")


def constraint_for(
    kind: str,
    task: str,
    labels: Any,
    text: str,
    mentions: str = "any",
    *,
    lang: str = "zh",
    sep: str = ",",
) -> ConstraintSpec:
    """The constraint for one prompt: its answer kind, task, label batch and text chunk."""
    if mentions not in MENTIONS:
        raise ValueError(f"mentions must be one of {', '.join(MENTIONS)}, got {mentions!r}")
    span = mentions == "span"
    if kind == "tuple":
        return ConstraintSpec("tuple", shape=tuple_shape(task, labels, lang, sep), span_text=text if span else None)
    return ConstraintSpec(
        "json_schema", schema=answer_schema(kind, task, labels, span), span_text=text if span else None
    )


def plan_constraints(plan: Any, mentions: str = "any") -> list[ConstraintSpec]:
    """One constraint per prompt of an ``extract.ExtractionPlan`` (in order)."""
    sep = ", " if plan.prompt_format == "zhixi" and plan.lang == "en" and plan.task == "re" else ","
    return [
        constraint_for(p["answer_kind"], plan.task, p["labels"], p["input"], mentions, lang=plan.lang, sep=sep)
        for p in plan.prompts
    ]
