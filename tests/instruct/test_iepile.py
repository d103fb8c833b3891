"""IEPile in and out: kg2instruct --format oneke writes OneKE's training records; prepare_instructions
reads IEPile train / test records and trains them in OneKE's own prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowlm_ray.alpaca import IGNORE_INDEX, tokenize_record
from knowlm_ray.alpaca import is_iepile_record as is_iepile
from knowlm_ray.ie.records import load_ie_records, load_schema
from knowlm_ray.instruct.iepile import build_iepile, iepile_row
from knowlm_ray.instruct.kg2instruct import main as kg2instruct
from knowlm_ray.instruct.prepare import assign, read_alpaca

REPO = Path(__file__).resolve().parents[2]
IE = REPO / "data" / "sample" / "ie"
SYS = "<<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
NER_ZH = "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。请按照JSON字符串的格式回答。"
# OneKE.md's worked training record, as published.
PUBLISHED = {
    "task": "NER",
    "source": "NER",
    "instruction": '{"instruction": "' + NER_ZH + '", "schema": ["组织机构", "人物", "地理位置"], '
    '"input": "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"}',
    "output": '{"组织机构": ["广州松日队", "青岛海牛队"], "人物": [], "地理位置": []}',
}


@pytest.fixture(scope="module")
def records_schema():
    return load_ie_records(IE / "records.jsonl"), load_schema(IE / "schema.json")


def test_written_records_are_oneke_training_records(records_schema):
    records, schema = records_schema
    rows = build_iepile(records, schema, seed=3)
    assert rows == build_iepile(records, schema, seed=3)  # one seeded stream
    by_id = {r["id"]: r for r in records}
    split = {"NER": 6, "RE": 4, "EE": 4}
    seen_tasks = set()
    for row in rows:
        assert list(row) == ["id", "task", "source", "instruction", "output"]
        inner = json.loads(row["instruction"])
        assert list(inner) == ["instruction", "schema", "input"] and inner["input"] == by_id[row["id"]]["text"]
        task = row["task"]
        seen_tasks.add(task)
        keys = [x["event_type"] for x in inner["schema"]] if task == "EE" else inner["schema"]
        assert 1 <= len(keys) < split[task] + max(1, split[task] // 2)  # IEPile's remainder rule
        answer = json.loads(row["output"])
        assert list(answer) == keys  # exactly the batch's labels, in order
        rec = by_id[row["id"]]
        if task == "NER":
            want = {(e["type"], e["text"]) for e in rec.get("entities") or [] if e["type"] in keys}
            assert {(k, v) for k, vs in answer.items() for v in vs} == want
        if task == "RE":
            want = {(r["relation"], r["head"], r["tail"]) for r in rec.get("relations") or [] if r["relation"] in keys}
            assert {(k, v["subject"], v["object"]) for k, vs in answer.items() for v in vs} == want
        if task == "EE":
            for item in inner["schema"]:
                assert item["trigger"] is True and item["arguments"] == schema[rec["lang"]]["ee"][item["event_type"]]
    assert seen_tasks == {"NER", "RE", "EE"}
    # labels come in random order: across seeds the NER label order of one record differs
    orders = {
        tuple(json.loads(r["instruction"])["schema"])
        for seed in range(6)
        for r in build_iepile(records[:1], schema, seed=seed, tasks=("ner",))
    }
    assert len(orders) > 1


def test_kg2instruct_format_oneke_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "iepile.jsonl"
    assert (
        kg2instruct(
            [
                "--records",
                str(IE / "records.jsonl"),
                "--schema",
                str(IE / "schema.json"),
                "--out",
                str(out),
                "--format",
                "oneke",
                "--limit",
                "4",
            ]
        )
        == 0
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines and all(is_iepile(json.loads(x)) for x in lines)
    assert f"wrote {len(lines)} IEPile records from 4 records" in capsys.readouterr().out


def test_published_record_is_read_and_prompted_as_oneke(tiny_model):
    from transformers import AutoTokenizer

    assert is_iepile(PUBLISHED) and not is_iepile({"instruction": "{not json", "output": ""})
    row = iepile_row(PUBLISHED, "f:1")
    assert row["prompt"] == "[INST] " + SYS + PUBLISHED["instruction"] + "[/INST]"
    assert row["output"] == PUBLISHED["output"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenize_record(tok, row, cutoff_len=4096)
    n = len(tok(row["prompt"])["input_ids"])
    assert ids["input_ids"][:n] == tok(row["prompt"])["input_ids"]  # OneKE's prompt, not alpaca's
    assert ids["labels"][:n] == [IGNORE_INDEX] * n and tok.decode(ids["input_ids"][n:-1]).strip() == row["output"]


def test_test_records_label_becomes_the_answer(tmp_path):
    instr = json.dumps(
        {"instruction": NER_ZH, "schema": ["人物", "地理位置"], "input": "鲁迅生于绍兴。"}, ensure_ascii=False
    )
    ee_instr = json.dumps(
        {
            "instruction": "x",
            "schema": [{"event_type": "地震", "trigger": True, "arguments": ["震级", "时间"]}],
            "input": "昨天发生5级地震。",
        },
        ensure_ascii=False,
    )
    f = tmp_path / "test.jsonl"
    rows = [
        {
            "id": "1",
            "task": "NER",
            "source": "s",
            "instruction": instr,
            "label": json.dumps(
                [{"entity": "绍兴", "entity_type": "地理位置"}, {"entity": "鲁迅", "entity_type": "人物"}],
                ensure_ascii=False,
            ),
        },
        {
            "id": "2",
            "task": "EE",
            "source": "s",
            "instruction": ee_instr,
            "label": json.dumps(
                [{"event_type": "地震", "event_trigger": "地震", "arguments": [{"argument": "5级", "role": "震级"}]}],
                ensure_ascii=False,
            ),
        },
        {"id": "3", "task": "KG", "source": "s", "instruction": instr, "label": "[]"},
        {"id": "4", "task": "NER", "source": "s", "instruction": instr, "label": '[{"entity": 1}]'},
    ]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    bad: list[dict] = []
    got = read_alpaca(f, bad)
    assert [json.loads(r["output"]) for r in got] == [
        {"人物": ["鲁迅"], "地理位置": ["绍兴"]},
        {"地震": [{"trigger": "地震", "arguments": {"震级": "5级", "时间": "NAN"}}]},
    ]
    assert [(b["line"], "task NER, RE or EE" in b["reason"] or "not a NER label" in b["reason"]) for b in bad] == [
        (3, True),
        (4, True),
    ]
    assigned = assign(got, 0, 0)
    assert all(r["prompt"].startswith("[INST] <<SYS>>") for r in assigned) and [r["task"] for r in assigned] == [
        "ner",
        "ee",
    ]


def test_lora_on_iepile_records_directly_is_refused_with_the_way(tmp_path):
    from knowlm_ray.alpaca import RecordError, load_alpaca

    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(PUBLISHED, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"train\.jsonl:1: an IEPile record .*prepare_instructions"):
        load_alpaca(f)
