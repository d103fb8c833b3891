"""The IE instruction text and answer formats: templates, answer-format sentences, languages,
and how a gold list is written as an answer (``render_output``).

Shared by the instruction builder (``knowlm_ray.instruct.kg2instruct``, which varies the template)
and extraction (``knowlm_ray.ie.prompts``, which asks with one fixed template), so a LoRA trained
on the builder's output is asked the way it was taught. A leaf of ``knowlm_ray.ie``: it imports
only the task / format names of ``ie.parsers``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from knowlm_ray.ie.parsers import FORMATS

LANGS = ("zh", "en")
NONE_ANSWER = {"zh": "无", "en": "None"}
# Characters the tuple format uses as syntax: a span holding one cannot be written as a tuple.
_TUPLE_SYNTAX = set("(),[]\n")

# Instruction templates: {schema} = candidate labels, {fmt} = the answer format sentence.
TEMPLATES = {
    "ner": {
        "zh": [
            "请从输入文本中抽取实体，候选的实体类型为{schema}。{fmt}",
            "已知实体类型列表：{schema}。请找出下面文本中所有属于这些类型的实体。{fmt}",
            "你是一名命名实体识别专家。请根据给定的实体类型{schema}，识别句子中出现的实体。{fmt}",
        ],
        "en": [
            "Extract the named entities in the input whose type is one of {schema}. {fmt}",
            "Given the entity types {schema}, find every entity of those types mentioned in the text. {fmt}",
            "You are an expert in named entity recognition. Using the candidate types {schema}, "
            "label the entities that appear in the following passage. {fmt}",
        ],
    },
    "re": {
        "zh": [
            "已知候选关系列表：{schema}，请从输入中找出具有这些关系的头实体和尾实体。{fmt}",
            "请根据关系列表{schema}，抽取文本中表达的关系三元组。{fmt}",
            "你是一名关系抽取专家。给定候选关系{schema}，请判断下面文本中哪些实体之间存在这些关系。{fmt}",
        ],
        "en": [
            "Identify the subjects and objects in the input that are linked by one of the relations {schema}. {fmt}",
            "Given the candidate relations {schema}, extract all relation triples expressed in the text. {fmt}",
            "You are an expert in relation extraction. Find which pairs of entities in the following "
            "passage stand in a relation from {schema}. {fmt}",
        ],
    },
    "ee": {
        "zh": [
            "已知事件类型及其论元角色：{schema}。请从输入中抽取事件的触发词、事件类型和论元。{fmt}",
            "请根据给定的事件结构{schema}，找出文本中发生的事件以及每个事件的论元。{fmt}",
            "你是一名事件抽取专家。候选事件类型与对应的论元角色为{schema}，请分析下面的句子。{fmt}",
        ],
        "en": [
            "The candidate event types and their argument roles are {schema}. Extract the events in the "
            "input together with their triggers and arguments. {fmt}",
            "Given the event schema {schema}, find each event described in the text and the arguments "
            "that fill its roles. {fmt}",
            "You are an expert in event extraction. Using the event types and roles {schema}, analyse "
            "the following sentence. {fmt}",
        ],
    },
}

# The answer-format sentence: names the format and the none-answer, so the output is checkable.
FORMAT_TEXT = {
    ("ner", "tuple"): {
        "zh": "请以(实体,实体类型)的格式回答，每行一个；如果没有符合的实体，请回答“无”。",
        "en": "Answer in the form (entity,entity type), one per line; if there is no such entity, answer None.",
    },
    ("ner", "json"): {
        "zh": '请以JSON字符串回答，格式为{"实体类型": ["实体"]}；如果没有符合的实体，请回答“无”。',
        "en": 'Answer with a JSON string shaped like {"entity type": ["entity"]}; if '
        "there is no such entity, answer None.",
    },
    ("re", "tuple"): {
        "zh": "请按照(头实体,关系,尾实体)的格式回答，每行一个三元组；如果不存在这些关系，请回答“无”。",
        "en": "Answer in the form (subject,relation,object), one triple per line; if none "
        "of these relations holds, answer None.",
    },
    ("re", "json"): {
        "zh": '请以JSON字符串回答，格式为{"关系": [{"subject": "头实体", "object": "尾实体"}]}；'
        "如果不存在这些关系，请回答“无”。",
        "en": 'Answer with a JSON string shaped like {"relation": [{"subject": "...", '
        '"object": "..."}]}; if none of these relations holds, answer None.',
    },
    ("ee", "tuple"): {
        "zh": "请以(事件触发词,事件类型,[(事件论元,论元角色)])的形式回答，每行一个事件；如果没有这些事件，请回答“无”。",
        "en": "Answer in the form (trigger,event type,[(argument,role)]), one event per line; "
        "if no such event occurs, answer None.",
    },
    ("ee", "json"): {
        "zh": '请以JSON字符串回答，格式为{"事件类型": [{"trigger": "触发词", "arguments": '
        '{"论元角色": "论元"}}]}；如果没有这些事件，请回答“无”。',
        "en": 'Answer with a JSON string shaped like {"event type": [{"trigger": "...", '
        '"arguments": {"role": "..."}}]}; if no such event occurs, answer None.',
    },
}


def guess_lang(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def tuple_safe(items: Iterable[dict]) -> bool:
    """True when no span or label contains tuple syntax, so the tuple format round-trips."""

    def strings(x: Any) -> Iterable[str]:
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)

    return all(s == s.strip() and not (_TUPLE_SYNTAX & set(s)) for s in strings(list(items)))


def _group(pairs: Iterable[tuple[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def render_output(task: str, lang: str, fmt: str, items: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """The answer text for one task's gold list (``NONE_ANSWER`` when the list is empty).

    ``labels``: the prompt's label batch; a JSON answer then lists its keys in that order (the
    order the instruction shows, and the one constrained decoding allows), else in item order."""
    if not items:
        return NONE_ANSWER[lang]
    if fmt == "tuple":
        if task == "ner":
            lines = [f"({e['text']},{e['type']})" for e in items]
        elif task == "re":
            lines = [f"({r['head']},{r['relation']},{r['tail']})" for r in items]
        else:
            lines = [
                "({},{},[{}])".format(
                    ev["trigger"], ev["type"], ",".join(f"({a['text']},{a['role']})" for a in ev["arguments"])
                )
                for ev in items
            ]
        return "\n".join(lines)
    if fmt != "json":
        raise ValueError(f"unknown output format {fmt!r} (expected one of {FORMATS})")
    if task == "ner":
        obj: dict = _group((e["type"], e["text"]) for e in items)
    elif task == "re":
        obj = _group((r["relation"], {"subject": r["head"], "object": r["tail"]}) for r in items)
    else:
        obj = {}
        for ev in items:
            by_role = _group((a["role"], a["text"]) for a in ev["arguments"])
            # IEPile style: one value per role, a list only when a role has several fillers.
            args = {role: vals[0] if len(vals) == 1 else vals for role, vals in by_role.items()}
            obj.setdefault(ev["type"], []).append({"trigger": ev["trigger"], "arguments": args})
    if labels is not None:
        order = {label: i for i, label in enumerate(labels)}
        obj = dict(sorted(obj.items(), key=lambda kv: order.get(kv[0], len(order))))
    return json.dumps(obj, ensure_ascii=False)
