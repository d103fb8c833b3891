"""OneKE's prompt format against strings this test writes out itself from OneKE's published
format (IEPile's OneKE.md and instruction.py), never from the module's constants."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.ie import oneke

# OneKE.md's worked NER record, copied as published.
PUBLISHED_NER_INSTRUCTION = (
    '{"instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。'
    '请按照JSON字符串的格式回答。", "schema": ["组织机构", "人物", "地理位置"], '
    '"input": "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"}'
)
SYS = "<<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"

TEXTS = {
    (
        "re",
        "zh",
    ): "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。请按照JSON字符串的格式回答。",
    (
        "ee",
        "zh",
    ): "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
    (
        "eet",
        "zh",
    ): "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件类型及事件触发词，不存在的事件返回空列表。请按照JSON字符串的格式回答。",
    (
        "eea",
        "zh",
    ): "你是专门进行事件论元提取的专家。请从input中抽取出符合schema定义的事件论元及论元角色，不存在的论元返回NAN或空字典，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
    (
        "kg",
        "zh",
    ): "你是一个图谱实体知识结构化专家。根据输入实体类型(entity type)的schema描述，从文本中抽取出相应的实体实例和其属性信息，不存在的属性不输出, 属性存在多值就返回列表，并输出为可解析的json格式。",
    (
        "ner",
        "en",
    ): "You are an expert in named entity recognition. Please extract entities that match the schema definition from the input. Return an empty list if the entity type does not exist. Please respond in the format of a JSON string.",
    (
        "re",
        "en",
    ): "You are an expert in relationship extraction. Please extract relationship triples that match the schema definition from the input. Return an empty list for relationships that do not exist. Please respond in the format of a JSON string.",
    (
        "ee",
        "en",
    ): "You are an expert in event extraction. Please extract events from the input that conform to the schema definition. Return an empty list for events that do not exist, and return NAN for arguments that do not exist. If an argument has multiple values, please return a list. Respond in the format of a JSON string.",
    (
        "eet",
        "en",
    ): "You are an expert in event extraction. Please extract event types and event trigger words from the input that conform to the schema definition. Return an empty list for non-existent events. Please respond in the format of a JSON string.",
    (
        "eea",
        "en",
    ): "You are an expert in event argument extraction. Please extract event arguments and their roles from the input that conform to the schema definition, which already includes event trigger words. If an argument does not exist, return NAN or an empty dictionary. Please respond in the format of a JSON string.",
    (
        "kg",
        "en",
    ): "You are an expert in structured knowledge systems for graph entities. Based on the schema description of the input entity type, you extract the corresponding entity instances and their attribute information from the text. Attributes that do not exist should not be output. If an attribute has multiple values, a list should be returned. The results should be output in a parsable JSON format.",
}


def test_published_ner_record_byte_for_byte():
    text = "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"
    [p] = oneke.prompts("ner", text, ["组织机构", "人物", "地理位置"], "zh")
    assert p["instruction"] == PUBLISHED_NER_INSTRUCTION
    assert p["prompt"] == "[INST] " + SYS + PUBLISHED_NER_INSTRUCTION + "[/INST]"
    assert p["labels"] == ["组织机构", "人物", "地理位置"]


@pytest.mark.parametrize("task,lang", sorted(TEXTS))
def test_task_texts(task, lang):
    schema = [{"entity_type": "人物", "attributes": {"出生地点": "出生的地点"}}] if task == "kg" else ["A"]
    got = json.loads(oneke.instruction(task, schema, "x", lang))
    assert got["instruction"] == TEXTS[(task, lang)]
    assert list(got) == ["instruction", "schema", "input"]


def test_example_key_order_and_sentence():
    ex = [{"input": "DPP-4抑制剂在特殊人群中的应用", "output": {"检查指标": []}}]
    s = oneke.instruction("ner", ["检查指标"], "t", "zh", example=ex)
    assert s == json.dumps(
        {
            "instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。"
            "请按照JSON字符串的格式回答。你可以参考example进行抽取。",
            "schema": ["检查指标"],
            "example": ex,
            "input": "t",
        },
        ensure_ascii=False,
    )
    assert ', "schema": ["检查指标"], "example": [{"input": ' in s  # separators ", " and ": "


@pytest.mark.parametrize(
    "n,split,sizes",
    [
        (0, 6, [0]),
        (3, 6, [3]),
        (6, 6, [6]),
        (7, 6, [7]),
        (8, 6, [8]),
        (9, 6, [6, 3]),
        (13, 6, [6, 7]),
        (5, 4, [5]),
        (6, 4, [4, 2]),
        (3, 1, [1, 1, 1]),
        (10, -1, [10]),
    ],
)
def test_split_rule(n, split, sizes):
    # IEPile: batches of split_num; a remainder >= max(1, split_num // 2) stands alone, else joins the last
    batches = oneke.split_labels(list(range(n)), split)
    assert [len(b) for b in batches] == sizes
    assert [x for b in batches for x in b] == list(range(n))


def test_ner_batches_of_six_and_described_schema():
    labels = [f"L{i}" for i in range(9)]
    ps = oneke.prompts("ner", "t", labels, "en")
    assert [p["labels"] for p in ps] == [labels[:6], labels[6:]]
    described = {"人物": "人的名字", "地理位置": "地名"}
    [p] = oneke.prompts("ner", "t", described, "zh")
    assert json.loads(p["instruction"])["schema"] == described
    assert p["labels"] == ["人物", "地理位置"]


def test_ee_schema_items():
    [p] = oneke.prompts("ee", "t", {"地震": ["震级", "时间"]}, "zh")
    assert json.loads(p["instruction"])["schema"] == [
        {"event_type": "地震", "trigger": True, "arguments": ["震级", "时间"]}
    ]
    assert '"trigger": true' in p["instruction"]
    assert p["labels"] == ["地震"]


def test_read_answers():
    assert oneke.read_answer("ner", '{"人物": ["鲁迅"], "地理位置": []}') == (True, [{"text": "鲁迅", "type": "人物"}])
    assert oneke.read_answer("re", '{"出生地": [{"subject": "鲁迅", "object": "绍兴"}]}') == (
        True,
        [{"head": "鲁迅", "relation": "出生地", "tail": "绍兴"}],
    )
    ok, ev = oneke.read_answer(
        "ee", '{"地震": [{"trigger": "地震", "arguments": {"震级": "5级", "时间": "NAN", "地点": ["A", "B"]}}]}'
    )
    assert ok and ev == [
        {
            "type": "地震",
            "trigger": "地震",
            "arguments": [
                {"role": "震级", "text": "5级"},
                {"role": "地点", "text": "A"},
                {"role": "地点", "text": "B"},
            ],
        }
    ]
    assert oneke.read_answer("ner", '{"人物": ["鲁') == (False, [])
    assert oneke.read_answer("ner", '["鲁迅"]') == (False, [])
    assert oneke.read_answer("ner", '{"人物": "鲁迅", "x": [1, "y"]}') == (True, [{"text": "y", "type": "x"}])


def test_bad_task_and_lang():
    with pytest.raises(ValueError, match="unknown OneKE task"):
        oneke.instruction("srl", [], "t")
    with pytest.raises(ValueError, match="unknown lang"):
        oneke.instruction("ner", [], "t", "fr")
