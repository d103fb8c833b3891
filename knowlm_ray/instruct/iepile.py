"""IEPile records in and out: the training data of OneKE.

Out (``knowlm kg2instruct --format oneke``): IE records + a label schema -> IEPile training
records, one per schema batch, in exactly the prompt OneKE is served with::

    {"id", "task": "NER"|"RE"|"EE", "source", "instruction": <OneKE instruction JSON>, "output": <answer JSON>}

The batches are the instruction builder's (``kg2instruct.label_batches``: the record's labels,
hard negatives and sampled negatives, shuffled, ``split_num`` per batch), so labels come in random
order and a batch may hold none of the record's labels (its answer then has only empty lists).

In (``prepare_instructions``): an IEPile record (train: ``output``; test: ``label``, IEPile's
gold list, turned into the answer OneKE would give) becomes a training row whose prompt is
OneKE's Llama-2 wrapper around the instruction, not the alpaca template.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from knowlm_ray.alpaca import RecordError
from knowlm_ray.ie import oneke
from knowlm_ray.ie.parsers import FIELD, TASKS
from knowlm_ray.ie.records import schema_section
from knowlm_ray.instruct.batches import (
    check_ratio,
    check_tasks,
    item_label,
    label_batches,
    resolve_negatives,
    split_sizes_for,
)

IEPILE_TASK = {"ner": "NER", "re": "RE", "ee": "EE"}


def _in_text_order(text: str, values: list[str]) -> list[str]:
    return sorted(dict.fromkeys(values), key=lambda v: (text.find(v), v))


def answer(task: str, text: str, labels: Sequence[str], items: Sequence[dict], roles: dict | None = None) -> dict:
    """OneKE's answer object for one batch: a key per label, in batch order; mentions in text order.
    EE: ``{"trigger", "arguments": {role: value | [values] | "NAN"}}`` with every role of the
    event type's schema (IEPile's converter: an event with no argument at all gets ``{}``)."""
    out: dict[str, Any] = {}
    for label in labels:
        mine = [x for x in items if item_label(task, x) == label]
        if task == "ner":
            out[label] = _in_text_order(text, [x["text"] for x in mine])
        elif task == "re":
            pairs = sorted({(x["head"], x["tail"]) for x in mine}, key=lambda p: (text.find(p[0]), p))
            out[label] = [{"subject": h, "object": t} for h, t in pairs]
        else:
            events = []
            for ev in sorted(mine, key=lambda e: (text.find(e["trigger"]), e["trigger"])):
                by_role: dict[str, list[str]] = {}
                for arg in ev.get("arguments") or []:
                    by_role.setdefault(arg["role"], []).append(arg["text"])
                args: dict[str, Any] = {}
                if by_role:
                    for role in (roles or {}).get(label) or list(by_role):
                        vals = _in_text_order(text, by_role.get(role, []))
                        args[role] = oneke.NAN if not vals else vals[0] if len(vals) == 1 else vals
                events.append({"trigger": ev["trigger"], "arguments": args})
            out[label] = events
    return out


def build_iepile(
    records: Sequence[dict],
    schema: dict,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    neg_ratio: float = 0.15,
    split_num: dict[str, int] | int | None = None,
    hard_negatives: dict[str, dict[str, list[str]]] | None = None,
    source: str = "kg2instruct",
) -> list[dict]:
    """IEPile training records for ``records`` (schema batches as ``build_instructions`` draws
    them, from one private stream seeded with ``seed``)."""
    check_tasks(tasks)
    check_ratio(neg_ratio)
    sizes = split_sizes_for(split_num)
    hard_negatives = resolve_negatives(records, schema, hard_negatives)
    rng = random.Random(seed)
    out = []
    for rec in records:
        lang, s = schema_section(rec, schema)
        negative = not any(rec.get(FIELD[t]) for t in TASKS)
        for task in tasks:
            items = rec.get(FIELD[task]) or []
            for batch in label_batches(
                rec, task, s, rng, sizes[task], neg_ratio, hard_negatives.get(lang, {}), negative
            ):
                shown: Any = {t: s["ee"][t] for t in batch} if task == "ee" else list(batch)
                instruction = oneke.instruction(
                    task, oneke.schema_items(task, shown) if task == "ee" else shown, rec["text"], lang
                )
                ans = answer(task, rec["text"], batch, [x for x in items if item_label(task, x) in batch], s.get("ee"))
                out.append(
                    {
                        "id": rec["id"],
                        "task": IEPILE_TASK[task],
                        "source": source,
                        "instruction": instruction,
                        "output": json.dumps(ans, ensure_ascii=False),
                    }
                )
    return out


# ------------------------------------------------------------------------------- reading
def _gold_answer(task: str, instruction: dict, label: list) -> dict:
    """IEPile's gold list (a test record's ``label``) as the answer OneKE gives for the prompt's schema."""
    schema = instruction.get("schema")
    keys = oneke.answer_keys(task, schema if isinstance(schema, (list, dict)) else [])
    if task == "ner":
        items = [{"text": x["entity"], "type": x["entity_type"]} for x in label]
    elif task == "re":
        items = [{"head": x["head"], "relation": x["relation"], "tail": x["tail"]} for x in label]
    else:
        items = [
            {
                "type": x["event_type"],
                "trigger": x.get("event_trigger", ""),
                "arguments": [{"role": a["role"], "text": a["argument"]} for a in x.get("arguments", [])],
            }
            for x in label
        ]
    roles = {it["event_type"]: it.get("arguments", []) for it in schema or [] if isinstance(it, dict)}
    return answer(task, instruction.get("input", ""), keys, items, roles)


def iepile_row(obj: dict, where: str) -> dict[str, str]:
    """A training row (``instruction``, ``input``, ``output``, ``prompt``) of an IEPile record.

    ``prompt`` is what the model reads (OneKE's wrapper), so the tokenizer uses it instead of
    the alpaca template. A test record's ``label`` is turned into the answer (NER, RE, EE)."""
    inner = json.loads(obj["instruction"])
    output = obj.get("output")
    if output is None:
        task = str(obj.get("task", "")).lower()
        if task not in TASKS:
            raise RecordError(f"{where}: an IEPile record without output needs task NER, RE or EE to use its label")
        try:
            label = json.loads(obj["label"]) if isinstance(obj["label"], str) else obj["label"]
            output = json.dumps(_gold_answer(task, inner, label), ensure_ascii=False)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise RecordError(f"{where}: IEPile label is not a {task.upper()} label ({exc})") from None
    if not isinstance(output, str):
        raise RecordError(f"{where}: IEPile field 'output' is not a string")
    return {"instruction": obj["instruction"], "input": "", "output": output, "prompt": oneke.wrap(obj["instruction"])}
