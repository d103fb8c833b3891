"""Prompt formats (knowlm_ray.ie.formats): every prompt is compared with a string written out here
by hand from the published formats (OneKE's IEPile records, seed 003's ZhiXi tables, KnowLM's
alpaca template), never with the code's own constants."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.cli import main
from knowlm_ray.ie.extract import IERequestError, handle_extract, plan_extraction
from knowlm_ray.ie.formats import (
    FORMATS,
    NAMES,
    ZHIXI_RE_FORMATS,
    ZHIXI_RE_TEMPLATES,
    PromptFormatError,
    get_format,
    serve_rows,
)
from knowlm_ray.ie.prompts import serve_format_instructions

SYS = "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
ONEKE_TEXT = "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"
# OneKE's published NER record (IEPile OneKE.md), as the model reads it.
ONEKE_NER = (
    '{"instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。'
    '请按照JSON字符串的格式回答。", "schema": ["组织机构", "人物", "地理位置"], '
    '"input": "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"}'
)
ALPACA_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)


def alpaca(instruction: str, text: str) -> str:
    return ALPACA_HEAD + instruction + "\n\n### Input:\n" + text + "\n\n### Response:\n"


def texts(name, task, text, schema, lang, **kw):
    return [p.prompt for p in get_format(name).prompts(task, text, schema, lang, **kw)]


def test_registry_names_and_answer_kinds():
    assert set(NAMES) == {"alpaca", "oneke", "zhixi", "chat"}
    assert {n: f.answer_kind for n, f in FORMATS.items()} == {
        "alpaca": "alpaca-json",
        "oneke": "oneke-json",
        "zhixi": "tuple",
        "chat": "alpaca-json",
    }
    with pytest.raises(PromptFormatError, match="prompt_format: must be one of"):
        get_format("llama9")


# ------------------------------------------------------------------------------------- oneke
def test_oneke_ner_is_the_published_record_in_the_llama2_wrapper():
    [p] = get_format("oneke").prompts("ner", ONEKE_TEXT, ["组织机构", "人物", "地理位置"], "zh")
    assert p.prompt == SYS + ONEKE_NER + "[/INST]"
    assert (p.labels, p.offset, p.chunk, p.answer_kind) == (["组织机构", "人物", "地理位置"], 0, 0, "oneke-json")
    parsed = get_format("oneke").read_answer(
        "ner", '{"组织机构": ["广州松日队", "青岛海牛队"], "人物": [], "地理位置": []}'
    )
    assert parsed.status == "ok"
    assert parsed.items == [{"text": "广州松日队", "type": "组织机构"}, {"text": "青岛海牛队", "type": "组织机构"}]
    assert get_format("oneke").read_answer("ner", '{"组织机构": ["广州').status == "unparsed"


@pytest.mark.parametrize(
    "task, lang, schema, instruction, shown",
    [
        (
            "re",
            "en",
            ["founder", "place of birth"],
            "You are an expert in relationship extraction. Please extract relationship triples that match the "
            "schema definition from the input. Return an empty list for relationships that do not exist. "
            "Please respond in the format of a JSON string.",
            '["founder", "place of birth"]',
        ),
        (
            "ee",
            "zh",
            {"地震": ["震级", "时间"]},
            "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，"
            "不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
            '[{"event_type": "地震", "trigger": true, "arguments": ["震级", "时间"]}]',
        ),
        (
            "eet",
            "zh",
            ["地震", "获奖"],
            "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件类型及事件触发词，"
            "不存在的事件返回空列表。请按照JSON字符串的格式回答。",
            '["地震", "获奖"]',
        ),
        (
            "re",
            "zh",
            {"出生地": "人出生的地方"},
            "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。"
            "请按照JSON字符串的格式回答。",
            '{"出生地": "人出生的地方"}',
        ),
        (
            "ee",
            "en",
            {"earthquake": ["magnitude"]},
            "You are an expert in event extraction. Please extract events from the input that conform to the "
            "schema definition. Return an empty list for events that do not exist, and return NAN for arguments "
            "that do not exist. If an argument has multiple values, please return a list. Respond in the format "
            "of a JSON string.",
            '[{"event_type": "earthquake", "trigger": true, "arguments": ["magnitude"]}]',
        ),
        (
            "eea",
            "en",
            [{"event_type": "earthquake", "trigger": "quake", "arguments": ["magnitude"]}],
            "You are an expert in event argument extraction. Please extract event arguments and their roles from "
            "the input that conform to the schema definition, which already includes event trigger words. If an "
            "argument does not exist, return NAN or an empty dictionary. Please respond in the format of a JSON "
            "string.",
            '[{"event_type": "earthquake", "trigger": "quake", "arguments": ["magnitude"]}]',
        ),
        (
            "kg",
            "zh",
            [{"entity_type": "人物", "attributes": {"出生地点": "出生的地点"}}],
            "你是一个图谱实体知识结构化专家。根据输入实体类型(entity type)的schema描述，从文本中抽取出相应的实体实例和其属性"
            "信息，不存在的属性不输出, 属性存在多值就返回列表，并输出为可解析的json格式。",
            '[{"entity_type": "人物", "attributes": {"出生地点": "出生的地点"}}]',
        ),
        (
            "ner",
            "en",
            {"person": "a human being", "location": "a place"},
            "You are an expert in named entity recognition. Please extract entities that match the schema "
            "definition from the input. Return an empty list if the entity type does not exist. Please respond "
            "in the format of a JSON string.",
            '{"person": "a human being", "location": "a place"}',
        ),
    ],
)
def test_oneke_tasks_languages_and_described_schemas(task, lang, schema, instruction, shown):
    text = "Some text."
    want = SYS + '{"instruction": "' + instruction + '", "schema": ' + shown + ', "input": "Some text."}[/INST]'
    assert texts("oneke", task, text, schema, lang) == [want]


def test_oneke_example_and_split_rule():
    example = [{"input": "鲁迅生于绍兴。", "output": {"人物": ["鲁迅"]}}]
    [p] = get_format("oneke").prompts("ner", "许广平。", ["人物"], "zh", example=example)
    assert p.prompt == (
        SYS
        + '{"instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。'
        '请按照JSON字符串的格式回答。你可以参考example进行抽取。", "schema": ["人物"], '
        '"example": [{"input": "鲁迅生于绍兴。", "output": {"人物": ["鲁迅"]}}], "input": "许广平。"}[/INST]'
    )
    labels = [f"L{i}" for i in range(9)]
    # NER 6 per prompt: 8 labels -> the remainder 2 (< 3) joins; 9 -> 6 + 3
    assert [p.labels for p in get_format("oneke").prompts("ner", "t", labels[:8], "en")] == [labels[:8]]
    assert [p.labels for p in get_format("oneke").prompts("ner", "t", labels, "en")] == [labels[:6], labels[6:]]
    assert [p.labels for p in get_format("oneke").prompts("ner", "t", labels, "en", split_num=-1)] == [labels]


# ------------------------------------------------------------------------------------ alpaca
def test_alpaca_is_todays_prompt():
    want = alpaca(
        '请从输入文本中抽取实体，候选的实体类型为["人物", "地理位置"]。'
        '请以JSON字符串回答，格式为{"实体类型": ["实体"]}；如果没有符合的实体，请回答“无”。',
        "鲁迅生于绍兴。",
    )
    assert texts("alpaca", "ner", "鲁迅生于绍兴。", ["人物", "地理位置"], "zh") == [want]
    plan = plan_extraction("ner", "鲁迅生于绍兴。", ["人物", "地理位置"], "zh")
    assert plan.texts == [want] and plan.prompt_format == "alpaca"
    en = alpaca(
        "Identify the subjects and objects in the input that are linked by one of the relations "
        '["employer"]. Answer in the form (subject,relation,object), one triple per line; if none of these '
        "relations holds, answer None.",
        "Ada worked at ACME.",
    )
    [p] = get_format("alpaca").prompts("re", "Ada worked at ACME.", ["employer"], "en", fmt="tuple")
    assert (p.prompt, p.answer_kind) == (en, "tuple")


# ------------------------------------------------------------------------------------- zhixi
def test_zhixi_relation_prompt_is_seed_003_template_0():
    zh = alpaca(
        "已知候选的关系列表:['出生地', '毕业院校'],请你根据关系列表,从以下输入中抽取出可能存在的头实体与尾实体,"
        '并给出对应的关系三元组。请按照"(头实体,关系,尾实体)"的格式回答。',
        "屠呦呦毕业于北京医学院。",
    )
    assert texts("zhixi", "re", "屠呦呦毕业于北京医学院。", ["出生地", "毕业院校"], "zh") == [zh]
    en = alpaca(
        "Identify the head entities (subjects) and tail entities (objects) in the following text and provide "
        "the corresponding relation triples from relation list ['founder']. Please provide your answer as a "
        "list of relation triples in the form of (Subject, Relation, Object).",
        "Jobs founded Apple.",
    )
    assert texts("zhixi", "re", "Jobs founded Apple.", ["founder"], "en") == [en]
    # NER / EE: the seed has no table; this project's alpaca wording
    assert texts("zhixi", "ner", "鲁迅。", ["人物"], "zh") == texts("alpaca", "ner", "鲁迅。", ["人物"], "zh")
    parsed = get_format("zhixi").read_answer("re", "(Jobs, founder, Apple)\n(x, y, z)", ["founder"])
    assert parsed.items[0] == {"head": "Jobs", "relation": "founder", "tail": "Apple"}  # y: the schema check drops it


def test_zhixi_tables_byte_for_byte():
    assert sorted(ZHIXI_RE_TEMPLATES["zh"]) == [0, 1, 2, 3] and sorted(ZHIXI_RE_TEMPLATES["en"]) == list(range(14))
    assert sorted(ZHIXI_RE_FORMATS["zh"]) == [0, 2, 3] and sorted(ZHIXI_RE_FORMATS["en"]) == [0, 1, 2, 3, 4]
    assert ZHIXI_RE_TEMPLATES["zh"][3] == (
        "给定的关系列表是:{s_schema}\n根据关系列表抽取关系三元组,在这个句子中可能包含哪些关系三元组?请以{s_format}的格式回答。"
    )
    assert ZHIXI_RE_TEMPLATES["en"][8] == (
        "Given the {s_schema}, identify the head entities (subjects) and tail entities (objects) and provide "
        "the corresponding relation triples. Your answer should consist of relation triples, with each triple "
        "formatted as {s_format}"
    )
    assert ZHIXI_RE_FORMATS["zh"][2] == '"关系:头实体,尾实体\n"'
    assert ZHIXI_RE_FORMATS["zh"][3] == "JSON字符串[{'head':'', 'relation':'', 'tail':''}, ]"
    assert ZHIXI_RE_FORMATS["en"][4] == "<head, relation, tail>"


# -------------------------------------------------------------------------------------- chat
class ChatTokenizer:
    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    bos_token = "<s>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize and add_generation_prompt
        return "<s>" + "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


def test_chat_wraps_the_alpaca_instruction_and_text_in_the_tokenizers_template():
    instruction = (
        '请从输入文本中抽取实体，候选的实体类型为["人物"]。请以JSON字符串回答，格式为{"实体类型": ["实体"]}；'
        "如果没有符合的实体，请回答“无”。"
    )
    [p] = get_format("chat").prompts("ner", "鲁迅。", ["人物"], "zh", tokenizer=ChatTokenizer())
    assert p.messages == [{"role": "user", "content": instruction + "\n\n鲁迅。"}]
    assert p.prompt == "<|user|>" + instruction + "\n\n鲁迅。<|assistant|>"  # BOS left to the tokenizer

    class Plain:
        chat_template = None

    with pytest.raises(PromptFormatError, match="chat template"):
        get_format("chat").prompts("ner", "鲁迅。", ["人物"], "zh", tokenizer=Plain())
    with pytest.raises(IERequestError, match="chat template"):
        plan_extraction("ner", "鲁迅。", ["人物"], "zh", prompt_format="chat", tokenizer=Plain())


# ----------------------------------------------------------------------------- /extract seam
def test_handle_extract_sends_oneke_prompts_verbatim_and_reads_oneke_answers():
    seen = []

    def model(prompts):
        seen.extend(prompts)
        return ['{"组织机构": ["广州松日队", "青岛海牛队"], "人物": [], "地理位置": []}'] * len(prompts)

    body = {"task": "ner", "text": ONEKE_TEXT, "schema": ["组织机构", "人物", "地理位置"], "prompt_format": "oneke"}
    rec = handle_extract(body, model)
    assert seen == [SYS + ONEKE_NER + "[/INST]"]
    assert [(e["text"], e["type"], e["start"]) for e in rec["entities"]] == [
        ("广州松日队", "组织机构", 11),
        ("青岛海牛队", "组织机构", 5),
    ]
    assert rec["unparsed"] == 0
    seen.clear()
    handle_extract({k: v for k, v in body.items() if k != "prompt_format"}, model, prompt_format="oneke")
    assert seen == [SYS + ONEKE_NER + "[/INST]"]  # the served model's format when the body names none
    seen.clear()
    handle_extract({**body, "prompt_format": "alpaca"}, model, prompt_format="oneke")
    assert seen[0].startswith(ALPACA_HEAD)  # the body's overrides the model's
    with pytest.raises(IERequestError, match="prompt_format"):
        handle_extract({**body, "prompt_format": "llama9"}, model)


# -------------------------------------------------------------------------- knowlm extract
def test_show_prompts_prints_exact_prompts_one_json_string_per_line(capsys):
    main(
        [
            "extract",
            "--task",
            "ner",
            "--schema",
            "组织机构",
            "人物",
            "地理位置",
            "--lang",
            "zh",
            "--text",
            ONEKE_TEXT,
            "--prompt-format",
            "oneke",
            "--show-prompts",
        ]
    )
    out = capsys.readouterr().out
    assert out == json.dumps(SYS + ONEKE_NER + "[/INST]", ensure_ascii=False) + "\n"
    # the schema split: 8 RE labels -> two zhixi prompts of 4
    labels = [f"r{i}" for i in range(8)]
    main(["extract", "--task", "re", "--schema", *labels, "--lang", "en", "--text", "a b.", "--prompt-format", "zhixi"]
         + ["--show-prompts"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    want = [
        alpaca(
            "Identify the head entities (subjects) and tail entities (objects) in the following text and provide "
            f"the corresponding relation triples from relation list {batch}. Please provide your answer as a "
            "list of relation triples in the form of (Subject, Relation, Object).",
            "a b.",
        )
        for batch in (str(labels[:4]), str(labels[4:]))
    ]
    assert [json.loads(line) for line in lines] == want


def test_show_prompts_chat_needs_a_model(capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            ["extract", "--task", "ner", "--schema", "人物", "--text", "x", "--prompt-format", "chat", "--show-prompts"]
        )
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err


# ---------------------------------------------------------------------------- training rows
def test_serve_rows_alpaca_equal_todays_and_oneke_rows_answer_every_label():
    rec = {
        "id": "d1",
        "text": "鲁迅生于绍兴。",
        "lang": "zh",
        "entities": [{"text": "鲁迅", "type": "人物"}, {"text": "绍兴", "type": "地理位置"}],
    }
    old = serve_format_instructions([rec], "ner", ["人物", "地理位置", "组织机构"], "zh")
    new = serve_rows([rec], "ner", ["人物", "地理位置", "组织机构"], "zh")
    assert [{k: v for k, v in r.items() if k not in ("prompt", "prompt_format")} for r in new] == old
    assert new[0]["prompt"] == alpaca(new[0]["instruction"], "鲁迅生于绍兴。")
    [row] = serve_rows([rec], "ner", ["人物", "地理位置", "组织机构"], "zh", prompt_format="oneke")
    assert row["prompt"].startswith(SYS) and row["input"] == ""
    assert row["output"] == '{"人物": ["鲁迅"], "地理位置": ["绍兴"], "组织机构": []}'


def test_batch_and_evaluate_configs_name_the_registrys_formats():
    from typing import get_args

    from knowlm_ray.config import BatchExtractConfig, EvaluateConfig
    from knowlm_ray.ie.batch import extract_documents

    for cfg in (BatchExtractConfig, EvaluateConfig):
        assert set(get_args(cfg.model_fields["prompt_format"].annotation)) == set(NAMES)
        assert cfg.model_fields["prompt_format"].default == "alpaca"
    seen = []

    def model(prompts):
        seen.extend(prompts)
        return ['{"组织机构": ["青岛海牛队"], "人物": [], "地理位置": []}'] * len(prompts)

    docs = [{"id": "d1", "text": ONEKE_TEXT, "lang": "zh"}]
    schema = {"zh": {"ner": ["组织机构", "人物", "地理位置"]}}
    [rec] = extract_documents(docs, ["ner"], schema, model, prompt_format="oneke")
    assert seen == [SYS + ONEKE_NER + "[/INST]"] and rec["entities"][0]["text"] == "青岛海牛队"


def test_config_spells_the_registry_names():
    import typing

    from knowlm_ray.config import PromptFormatName
    from knowlm_ray.ie.formats import NAMES

    assert set(typing.get_args(PromptFormatName)) == set(NAMES)
