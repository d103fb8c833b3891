"""Answer parsers against a table of messy model outputs; schema check; offsets; prompts."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.ie.offsets import SpanLocator, span_offsets
from knowlm_ray.ie.parsers import detect_format, parse_answer
from knowlm_ray.ie.prompts import SPLIT_NUM, build_instruction, split_schema, split_sizes, split_text
from knowlm_ray.ie.schema import SchemaError, check_items, normalize_schema
from knowlm_ray.ie.templates import TEMPLATES


def E(text, type_):
    return {"text": text, "type": type_}


def R(h, r, t):
    return {"head": h, "relation": r, "tail": t}


def V(type_, trigger, *args):
    return {"type": type_, "trigger": trigger, "arguments": [{"role": r, "text": t} for t, r in args]}


LUXUN = [E("鲁迅", "人物"), E("周树人", "人物")]

# (task, model text, expected items, expected status)
TABLE = [
    # clean answers, both formats
    ("ner", '{"人物": ["鲁迅", "周树人"]}', LUXUN, "ok"),
    ("ner", "(鲁迅,人物)\n(周树人,人物)", LUXUN, "ok"),
    # prose around the answer, code fences
    ("ner", '答案如下：\n```json\n{"人物": ["鲁迅", "周树人"]}\n```\n希望对你有帮助！', LUXUN, "ok"),
    ("ner", "好的，抽取结果是 (鲁迅,人物) 和 (周树人,人物)。", LUXUN, "ok"),
    ("ner", "Sure! Here you go:\n(Marie Curie,person)\nHope this helps.", [E("Marie Curie", "person")], "ok"),
    # truncated JSON: complete items kept, the cut string dropped
    ("ner", '{"人物": ["鲁迅", "周树人"], "地理位置": ["浙江', LUXUN, "partial"),
    ("ner", '{"人物": ["鲁迅", "周树', [E("鲁迅", "人物")], "partial"),
    ("ner", '{"人物": ["鲁迅"], "地理', [E("鲁迅", "人物")], "partial"),
    (
        "re",
        '{"出生地": [{"subject": "鲁迅", "object": "浙江绍兴"}, {"subject": "周树人", "obj',
        [R("鲁迅", "出生地", "浙江绍兴")],
        "partial",
    ),
    (
        "ee",
        '{"获奖": [{"trigger": "获得", "arguments": {"获奖者": "屠呦呦", "奖项": "诺贝尔',
        [V("获奖", "获得", ("屠呦呦", "获奖者"))],
        "partial",
    ),
    # truncated tuples: the cut tuple dropped (an event keeps its complete arguments)
    ("ner", "(鲁迅,人物)\n(周树人,人物)\n(浙江绍", LUXUN, "partial"),
    ("re", "(鲁迅,出生地,浙江绍兴)\n(鲁迅,出生日期,1881", [R("鲁迅", "出生地", "浙江绍兴")], "partial"),
    (
        "ee",
        "(获得,获奖,[(屠呦呦,获奖者),(2015年,时间),(诺贝",
        [V("获奖", "获得", ("屠呦呦", "获奖者"), ("2015年", "时间"))],
        "partial",
    ),
    ("ee", "(获得,获", [], "partial"),
    # full-width punctuation
    ("ner", "（鲁迅，人物）\n（周树人，人物）", LUXUN, "ok"),
    ("ner", "｛“人物”：［“鲁迅”，“周树人”］｝", LUXUN, "partial"),
    ("re", "（鲁迅，出生地，浙江绍兴）", [R("鲁迅", "出生地", "浙江绍兴")], "ok"),
    ("ee", "（获得，获奖，［（屠呦呦，获奖者）］）", [V("获奖", "获得", ("屠呦呦", "获奖者"))], "ok"),
    # none answers, in every spelling
    ("ner", "NAN", [], "none"),
    ("ner", "无", [], "none"),
    ("ner", "无。", [], "none"),
    ("re", "none", [], "none"),
    ("re", "None.", [], "none"),
    ("ee", "null", [], "none"),
    ("ee", "[]", [], "none"),
    ("ner", "  \n ", [], "none"),
    ("ner", "NAN\nNAN", [], "none"),
    ("ner", "好的。无", [], "none"),
    ("re", "The answer is: None.", [], "none"),
    ("ner", "抽取结果：\n无", [], "none"),
    # NAN values inside an answer
    ("ner", '{"人物": ["鲁迅"], "作品": ["NAN"], "时间": []}', [E("鲁迅", "人物")], "ok"),
    ("re", "(鲁迅,出生地,NAN)\n(鲁迅,出生日期,1881年)", [R("鲁迅", "出生日期", "1881年")], "ok"),
    (
        "ee",
        '{"award": [{"trigger": "won", "arguments": {"winner": "A", "date": "NAN", "award": ["B", "C"]}}]}',
        [V("award", "won", ("A", "winner"), ("B", "award"), ("C", "award"))],
        "ok",
    ),
    # duplicated items (a looping model)
    ("ner", "(鲁迅,人物)\n(鲁迅,人物)\n(鲁迅,人物)\n(周树人,人物)\n(鲁迅,人物)", LUXUN, "ok"),
    ("ner", '{"人物": ["鲁迅", "周树人", "鲁迅"]}\n{"人物": ["鲁迅"]}', LUXUN, "ok"),
    (
        "ee",
        "(获得,获奖,[(屠呦呦,获奖者)])\n(获得,获奖,[(屠呦呦,获奖者),(2015年,时间)])\n(获得,获奖,[(屠",
        [V("获奖", "获得", ("屠呦呦", "获奖者"), ("2015年", "时间"))],
        "partial",
    ),
    # a key written twice keeps both values (strict JSON and the lenient reader)
    ("ner", '{"人物": ["鲁迅"], "时间": ["1881年"], "人物": ["周树人"]}', LUXUN + [E("1881年", "时间")], "ok"),
    ("ner", '{"人物": "鲁迅", "人物": ["周树人"],}', LUXUN, "partial"),
    (
        "ee",
        '{"获奖": {"trigger": "获得", "arguments": {"获奖者": "屠呦呦", "获奖者": "屠"}}}',
        [V("获奖", "获得", ("屠呦呦", "获奖者"), ("屠", "获奖者"))],
        "ok",
    ),
    # other shapes models produce
    ("ner", "{'人物': ['鲁迅', '周树人'],}", LUXUN, "partial"),
    ("ner", "{人物: [鲁迅, 周树人]}", LUXUN, "partial"),
    ("ner", '[{"text": "鲁迅", "type": "人物"}, {"entity": "周树人", "entity_type": "人物"}]', LUXUN, "ok"),
    ("ner", '{"entities": [{"text": "鲁迅", "type": "人物"}]}', [E("鲁迅", "人物")], "ok"),
    ("ner", '("鲁迅", "人物")', [E("鲁迅", "人物")], "ok"),
    ("ner", "(Washington, D.C.,location)", [E("Washington, D.C.", "location")], "ok"),
    ("re", "<Marie Curie, place of birth, Warsaw>", [R("Marie Curie", "place of birth", "Warsaw")], "ok"),
    ("re", "[Marie Curie, place of birth, Warsaw]", [R("Marie Curie", "place of birth", "Warsaw")], "ok"),
    ("re", '{"place of birth": [["Marie Curie", "Warsaw"]]}', [R("Marie Curie", "place of birth", "Warsaw")], "ok"),
    (
        "ee",
        '[{"event_type": "获奖", "trigger": "获得", "arguments": [{"role": "获奖者", "argument": "屠呦呦"}]}]',
        [V("获奖", "获得", ("屠呦呦", "获奖者"))],
        "ok",
    ),
    ("ee", '{"地震": {"trigger": "地震", "arguments": {"震级": 5.2}}}', [V("地震", "地震", ("5.2", "震级"))], "ok"),
    # junk: nothing, never an exception
    ("ner", "今天天气很好，我们去公园散步吧", [], "unparsed"),
    ("re", "}}}{{{]][[", [], "partial"),
    ("ee", "((((", [], "partial"),
    ("ner", "(no comma here)", [], "partial"),
]


@pytest.mark.parametrize("task,text,want,status", TABLE, ids=[f"{i}-{t[0]}" for i, t in enumerate(TABLE)])
def test_parser_table(task, text, want, status):
    got = parse_answer(task, text)
    assert got.items == want
    assert got.status == status


def test_format_detection_and_fallback():
    assert detect_format('前言 {"a": 1} (x,y)') == "json"
    assert detect_format('(x,y) {"a": 1}') == "tuple"
    assert detect_format("（鲁迅，人物）") == "tuple"
    # a forced format reads only that format
    assert parse_answer("ner", "(鲁迅,人物)", "json").items == []
    assert parse_answer("ner", "(鲁迅,人物)", "tuple").items == [E("鲁迅", "人物")]
    # detected JSON that holds nothing falls back to tuples found later in the text
    assert parse_answer("ner", "JSON如下：{}\n(鲁迅,人物)").items == [E("鲁迅", "人物")]
    with pytest.raises(ValueError, match="unknown task"):
        parse_answer("kg", "x")
    with pytest.raises(ValueError, match="format"):
        parse_answer("ner", "x", "yaml")


def test_relation_with_commas_split_around_a_known_label():
    text = "(King's College, Cambridge,educated at,Alan Turing)"
    assert parse_answer("re", text).items == []  # ambiguous without the schema
    got = parse_answer("re", text, labels=["educated at", "employer"]).items
    assert got == [R("King's College, Cambridge", "educated at", "Alan Turing")]


def test_every_prefix_of_an_answer_parses_to_a_subset():
    # Truncation at every character: never raises, never invents an item.
    answers = {
        "ner": '{"人物": ["鲁迅", "周树人"], "地理位置": ["浙江绍兴"], "时间": ["1881年"]}',
        "re": '{"出生地": [{"subject": "鲁迅", "object": "浙江绍兴"}], "作者": [{"subject": "呐喊", "object": "鲁迅"}]}',
        "ee": "(获得,获奖,[(屠呦呦,获奖者),(诺贝尔奖,奖项)])\n(收购,收购,[(腾讯,收购方),(2016年,时间)])",
    }
    for task, full in answers.items():
        whole = parse_answer(task, full).items
        for cut in range(len(full) + 1):
            got = parse_answer(task, full[:cut]).items
            for item in got:
                if task == "ee":
                    match = [w for w in whole if (w["type"], w["trigger"]) == (item["type"], item["trigger"])]
                    assert match and all(a in match[0]["arguments"] for a in item["arguments"]), (cut, item)
                else:
                    assert item in whole, (task, cut, item)


# ----------------------------------------------------------------------------------- schema
def test_schema_shapes():
    assert normalize_schema("ner", ["人物", "地点 "]) == ["人物", "地点"]
    assert normalize_schema("ner", {"人物": "人的名字", "地点": "地名"}) == ["人物", "地点"]
    assert normalize_schema("ee", {"获奖": ["获奖者", "时间"]}) == {"获奖": ["获奖者", "时间"]}
    assert normalize_schema("ee", ["获奖", "地震"]) == {"获奖": None, "地震": None}
    assert normalize_schema("ee", [{"event_type": "获奖", "arguments": ["获奖者"]}]) == {"获奖": ["获奖者"]}
    for bad, msg in [
        ([], "non-empty"),
        (["a", ""], "non-empty string"),
        (["Person", "person"], "twice"),
        ([1], "non-empty string"),
        ("", "non-empty"),
    ]:
        with pytest.raises(SchemaError, match=msg):
            normalize_schema("ner", bad)
    with pytest.raises(SchemaError, match="roles"):
        normalize_schema("ee", {"获奖": 3})


def test_labels_outside_the_schema_are_dropped_and_reported():
    items = [E("鲁迅", "人物"), E("绍兴府", "组织"), E("Marie", "PERSON"), E("x", "组织")]
    kept, dropped = check_items("ner", items, ["人物", "person"])
    assert kept == [E("鲁迅", "人物"), E("Marie", "person")]  # case-folded match takes the schema's spelling
    assert dropped == [{"kind": "entity type", "label": "组织", "count": 2}]
    kept, dropped = check_items("re", [R("a", "出生地", "b"), R("a", "配偶", "b")], ["出生地"])
    assert kept == [R("a", "出生地", "b")] and dropped[0]["label"] == "配偶"
    events = [V("获奖", "获得", ("屠呦呦", "获奖者"), ("瑞典", "颁奖方")), V("战争", "打响", ("甲", "攻方"))]
    kept, dropped = check_items("ee", events, {"获奖": ["获奖者", "奖项"]})
    assert kept == [V("获奖", "获得", ("屠呦呦", "获奖者"))]
    assert dropped == [
        {"kind": "role", "label": "颁奖方", "count": 1, "event": "获奖"},
        {"kind": "event type", "label": "战争", "count": 1},
    ]
    kept, _ = check_items("ee", events[:1], ["获奖"])  # types only: any role accepted
    assert kept == events[:1]


# ---------------------------------------------------------------------------------- offsets
def test_offsets_successive_occurrences_and_not_found():
    text = "鲁迅说：鲁迅就是周树人。"
    loc = SpanLocator(text)
    assert loc.find("鲁迅", key="a") == (0, 2)
    assert loc.find("鲁迅", key="a") == (4, 6)  # next unused occurrence for the same key
    assert loc.find("鲁迅", key="a") == (0, 2)  # all used: the first
    assert loc.find("鲁迅", key="b") == (0, 2)  # another key starts over
    assert loc.find("许广平") is None and loc.anchor("许广平") == ("许广平", None, None)
    assert loc.find("周树人", window=(0, 4)) == (8, 11)  # outside the window beats not found
    assert SpanLocator("a鲁迅b鲁迅").find("鲁迅", window=(3, 6)) == (4, 6)
    assert loc.find("") is None


def test_offsets_after_normalisation_use_the_texts_own_characters():
    text = "Marie Curie（居里夫人）won the Nobel Prize."
    loc = SpanLocator(text)
    assert loc.anchor("marie curie") == ("Marie Curie", 0, 11)
    s, e = span_offsets(text, "Curie(居里夫人)")
    assert text[s:e] == "Curie（居里夫人）"
    assert loc.anchor("NOBEL prize")[0] == "Nobel Prize"
    # a folded match must cover whole characters: "ﬁ" folds to "fi", "i" alone is not inside it
    assert SpanLocator("ﬁsh").find("ish") is None


# ---------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    "n,split,want",
    [
        (5, 6, [5]),
        (6, 6, [6]),
        (7, 6, [7]),
        (8, 6, [8]),
        (9, 6, [6, 3]),
        (13, 6, [6, 7]),
        (14, 6, [6, 8]),
        (15, 6, [6, 6, 3]),
        (11, 4, [4, 4, 3]),
        (9, 4, [4, 5]),
        (10, 4, [4, 4, 2]),
        (1, 4, [1]),
        (2, 4, [2]),
        (3, 1, [1, 1, 1]),
        (0, 4, []),
    ],
)
def test_iepile_split_sizes(n, split, want):
    assert split_sizes(n, split) == want


def test_split_schema_keeps_order_and_ee_roles():
    labels = [f"L{i}" for i in range(11)]
    batches = split_schema("re", labels)
    assert [len(b) for b in batches] == [4, 4, 3] and sum(batches, []) == labels
    assert [len(b) for b in split_schema("ner", labels)] == [6, 5]
    ee = {f"E{i}": [f"r{i}"] for i in range(5)}
    parts = split_schema("ee", ee)
    assert parts == [{k: ee[k] for k in list(ee)[:5]}]  # 5 = 4 + remainder 1 < 2
    assert SPLIT_NUM == {"ner": 6, "re": 4, "ee": 4}


def test_split_text_at_sentence_ends():
    text = "鲁迅是作家。他生于绍兴。" * 10 + "一句没有句号的很长很长的话" * 5
    chunks = split_text(text, "zh", max_chars=40)
    assert "".join(c for _, c in chunks) == text
    assert all(text[o : o + len(c)] == c and len(c) <= 40 for o, c in chunks)
    assert all(c.endswith("。") for _, c in chunks[:-3])  # whole sentences until the long one
    assert split_text("short.", "en", 40) == [(0, "short.")]
    en = "Marie Curie was born in Warsaw. She studied in Paris. Dr. Smith met her in 1911. " * 3
    assert all(c.endswith(". ") for _, c in split_text(en, "en", 60))


def test_build_instruction_is_deterministic_and_names_labels():
    a = build_instruction("ner", ["人物", "作品"], "zh", "json")
    assert a == build_instruction("ner", ["人物", "作品"], "zh", "json")
    assert a.startswith(TEMPLATES["ner"]["zh"][0].split("{")[0])
    assert json.dumps(["人物", "作品"], ensure_ascii=False) in a and "JSON" in a
    ee = build_instruction("ee", {"获奖": ["获奖者"]}, "zh", "tuple")
    assert '{"获奖": ["获奖者"]}' in ee and "(事件触发词" in ee
    assert '["获奖"]' in build_instruction("ee", {"获奖": None}, "zh")
    assert build_instruction("re", ["employer"], "en", template=2).startswith("You are an expert")
    for kw, msg in [({"lang": "fr"}, "lang"), ({"fmt": "xml"}, "format"), ({"template": 9}, "template")]:
        args = {"task": "ner", "labels": ["a"], "lang": "zh", **kw}
        with pytest.raises(ValueError, match=msg):
            build_instruction(**args)
