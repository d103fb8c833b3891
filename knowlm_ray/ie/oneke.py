"""OneKE's prompt format: the IEPile JSON instruction, its label batches, the Llama-2 chat
wrapper, and its JSON answers read back as IE record items.

zjunlp/OneKE (a full fine-tune of Chinese-Alpaca-2-13B on IEPile) was trained on prompts of
exactly this shape, so the strings below are interface facts, reproduced byte for byte:

    [INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n{"instruction": ..., "schema": [...], "input": ...}[/INST]

The instruction object's keys come in this order: ``instruction``, ``schema``, optional
``example``, ``input``; it is ``json.dumps(..., ensure_ascii=False)``. Long schemas are cut into
batches of ``SPLIT_NUM[task]`` labels with IEPile's remainder rule (``split_labels``); every batch
of one text is its own prompt, and their answers are merged.

A leaf module: it imports nothing from this package, so the instruction builder, the serving
layer and the scorer can all depend on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TASKS = ("ner", "re", "ee", "eet", "eea", "kg")
LANGS = ("zh", "en")

SYSTEM = "<<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"

INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("ner", "zh"): "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。"
    "请按照JSON字符串的格式回答。",
    ("re", "zh"): "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。"
    "请按照JSON字符串的格式回答。",
    ("ee", "zh"): "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，"
    "不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
    ("eet", "zh"): "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件类型及事件触发词，"
    "不存在的事件返回空列表。请按照JSON字符串的格式回答。",
    ("eea", "zh"): "你是专门进行事件论元提取的专家。请从input中抽取出符合schema定义的事件论元及论元角色，"
    "不存在的论元返回NAN或空字典，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
    ("kg", "zh"): "你是一个图谱实体知识结构化专家。根据输入实体类型(entity type)的schema描述，"
    "从文本中抽取出相应的实体实例和其属性信息，不存在的属性不输出, 属性存在多值就返回列表，"
    "并输出为可解析的json格式。",
    ("ner", "en"): "You are an expert in named entity recognition. Please extract entities that match the "
    "schema definition from the input. Return an empty list if the entity type does not exist. "
    "Please respond in the format of a JSON string.",
    ("re", "en"): "You are an expert in relationship extraction. Please extract relationship triples that match "
    "the schema definition from the input. Return an empty list for relationships that do not "
    "exist. Please respond in the format of a JSON string.",
    ("ee", "en"): "You are an expert in event extraction. Please extract events from the input that conform to "
    "the schema definition. Return an empty list for events that do not exist, and return NAN for "
    "arguments that do not exist. If an argument has multiple values, please return a list. "
    "Respond in the format of a JSON string.",
    ("eet", "en"): "You are an expert in event extraction. Please extract event types and event trigger words "
    "from the input that conform to the schema definition. Return an empty list for non-existent "
    "events. Please respond in the format of a JSON string.",
    ("eea", "en"): "You are an expert in event argument extraction. Please extract event arguments and their "
    "roles from the input that conform to the schema definition, which already includes event "
    "trigger words. If an argument does not exist, return NAN or an empty dictionary. Please "
    "respond in the format of a JSON string.",
    ("kg", "en"): "You are an expert in structured knowledge systems for graph entities. Based on the schema "
    "description of the input entity type, you extract the corresponding entity instances and "
    "their attribute information from the text. Attributes that do not exist should not be "
    "output. If an attribute has multiple values, a list should be returned. The results should "
    "be output in a parsable JSON format.",
}

# Appended to the instruction when examples are given. The Chinese sentence is OneKE's own
# (IEPile's OneKE.md); OneKE documents no English one, so the English sentence is ours.
EXAMPLE_HINT = {"zh": "你可以参考example进行抽取。", "en": " You can refer to the example for extraction."}

SPLIT_NUM = {"ner": 6, "re": 4, "ee": 4, "eet": 4, "eea": 4, "kg": 1}  # labels per prompt; -1: no split
NAN = "NAN"  # OneKE's answer for an argument that is absent


def _check(task: str, lang: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown OneKE task {task!r} (expected one of {', '.join(TASKS)})")
    if lang not in LANGS:
        raise ValueError(f"unknown lang {lang!r} (expected one of {', '.join(LANGS)})")


def split_labels(labels: Sequence[Any], split_num: int) -> list[list[Any]]:
    """IEPile's batches: ``split_num`` labels each; a remainder of at least ``split_num // 2``
    (at least 1) is a batch of its own, a smaller one joins the last batch; -1: one batch."""
    labels = list(labels)
    if split_num == -1:
        return [labels]
    if split_num < 1:
        raise ValueError(f"split_num must be >= 1 or -1, got {split_num}")
    whole = max(len(labels) // split_num, 1) * split_num
    batches = [labels[i : i + split_num] for i in range(0, whole, split_num)]
    if len(labels) - whole >= max(1, split_num // 2):
        batches.append(labels[whole:])
    else:
        batches[-1].extend(labels[whole:])
    return batches


def schema_items(task: str, schema: Any) -> list[Any]:
    """The schema as OneKE lists it. NER / RE / EET: label names; a ``{label: description}`` map
    stays a map (custom schema explanations) and is split by label. EE: a ``{type: [roles]}`` map
    becomes ``{"event_type", "trigger": true, "arguments"}`` items; items already in OneKE's shape
    (EE, EEA, KG) pass through."""
    if task in ("ee", "eea") and isinstance(schema, dict):
        return [{"event_type": t, "trigger": True, "arguments": list(roles or [])} for t, roles in schema.items()]
    if isinstance(schema, dict):
        return [{k: v} for k, v in schema.items()]  # one entry per label; merged back per batch
    return list(schema)


def _batch_schema(batch: list[Any], described: bool) -> Any:
    if described:
        merged: dict[str, Any] = {}
        for entry in batch:
            merged.update(entry)
        return merged
    return batch


def instruction(
    task: str, schema: Any, text: str, lang: str = "zh", example: list[dict[str, Any]] | None = None
) -> str:
    """One OneKE instruction object, as the JSON string the model reads."""
    _check(task, lang)
    body: dict[str, Any] = {
        "instruction": INSTRUCTIONS[(task, lang)] + (EXAMPLE_HINT[lang] if example else ""),
        "schema": schema,
    }
    if example:
        body["example"] = example
    body["input"] = text
    return json.dumps(body, ensure_ascii=False)


def wrap(instruction_json: str) -> str:
    """The Llama-2 chat prompt OneKE was trained on (the tokenizer adds BOS)."""
    return "[INST] " + SYSTEM + instruction_json + "[/INST]"


def prompts(
    task: str,
    text: str,
    schema: Any,
    lang: str = "zh",
    *,
    split_num: int | None = None,
    example: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``{"instruction", "prompt", "labels"}`` per label batch: the instruction JSON, the full
    prompt, and the batch's labels in order (the keys its answer must have)."""
    _check(task, lang)
    described = task in ("ner", "re", "eet") and isinstance(schema, dict)
    out = []
    for batch in split_labels(schema_items(task, schema), SPLIT_NUM[task] if split_num is None else split_num):
        shown = _batch_schema(batch, described)
        instr = instruction(task, shown, text, lang, example)
        out.append({"instruction": instr, "prompt": wrap(instr), "labels": answer_keys(task, shown)})
    return out


def answer_keys(task: str, schema: Any) -> list[str]:
    """The top-level keys an answer to ``schema`` has, in order."""
    if isinstance(schema, dict):
        return list(schema)
    keys = []
    for item in schema:
        if isinstance(item, dict):
            keys.append(item.get("event_type") or item.get("entity_type") or "")
        else:
            keys.append(item)
    return keys


def _values(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v and v != NAN]
    return [value] if isinstance(value, str) and value and value != NAN else []


def read_answer(task: str, answer: str) -> tuple[bool, list[dict[str, Any]]]:
    """An answer as IE record items: ``(parsed, items)``; ``parsed`` is False when it is not a JSON
    object (IEPile counts that as an error). NER ``{"text", "type"}``; RE ``{"head", "relation",
    "tail"}``; EE / EET / EEA ``{"type", "trigger", "arguments": [{"role", "text"}]}``. Items of
    the wrong shape inside a readable answer are skipped, as IEPile's extractors skip them."""
    try:
        obj = json.loads(answer)
    except (json.JSONDecodeError, RecursionError):
        return False, []
    if not isinstance(obj, dict):
        return False, []
    items: list[dict[str, Any]] = []
    for label, values in obj.items():
        if not isinstance(values, list):
            continue
        for v in values:
            if task == "ner" and isinstance(v, str) and v:
                items.append({"text": v, "type": label})
            elif task == "re" and isinstance(v, dict):
                head, tail = v.get("subject", ""), v.get("object", "")
                if isinstance(head, str) and isinstance(tail, str):
                    items.append({"head": head, "relation": label, "tail": tail})
            elif task == "eet" and isinstance(v, str) and v:
                items.append({"type": label, "trigger": v, "arguments": []})
            elif task in ("ee", "eea") and isinstance(v, dict):
                trigger = v.get("trigger", "")
                args = v.get("arguments", {})
                if not isinstance(trigger, str) or not isinstance(args, dict):
                    continue
                items.append(
                    {
                        "type": label,
                        "trigger": trigger,
                        "arguments": [
                            {"role": role, "text": t} for role, value in args.items() for t in _values(value)
                        ],
                    }
                )
    return True, items
