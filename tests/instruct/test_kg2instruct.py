"""KG → IE instruction builder: sample data sanity, render/parse round trips, determinism, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from knowlm_ray.alpaca import RecordError, load_alpaca
from knowlm_ray.ie.parsers import FIELD, FORMATS, TASKS, parse_output
from knowlm_ray.ie.records import load_ie_records, load_schema
from knowlm_ray.ie.templates import LANGS, NONE_ANSWER, render_output, tuple_safe
from knowlm_ray.instruct.kg2instruct import build_instructions, build_serve_instructions, main

IE = Path(__file__).resolve().parents[2] / "data" / "sample" / "ie"
RECORDS, SCHEMA, INSTRUCTIONS = IE / "records.jsonl", IE / "schema.json", IE / "instructions.json"


@pytest.fixture(scope="module")
def records():
    return load_ie_records(RECORDS)


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA)


def canon(task: str, items: list[dict]) -> list:
    """Order-insensitive form of one task's list (events: arguments sorted too)."""
    if task == "ner":
        keys = [(e["text"], e["type"]) for e in items]
    elif task == "re":
        keys = [(r["head"], r["relation"], r["tail"]) for r in items]
    else:
        keys = [
            (ev["type"], ev["trigger"], tuple(sorted((a["role"], a["text"]) for a in ev["arguments"]))) for ev in items
        ]
    return sorted(keys)


# ------------------------------------------------------------------------- the sample data


def test_sample_records_cover_the_brief(records, schema):
    langs = Counter(r["lang"] for r in records)
    assert len(records) >= 140 and min(langs["zh"], langs["en"]) >= 60
    assert sum(bool(r["events"]) for r in records) >= 40
    assert sum(bool(r["entities"]) and bool(r["relations"]) for r in records) > len(records) / 2
    negatives = [r for r in records if not (r["entities"] or r["relations"] or r["events"])]
    assert 2 <= len(negatives) <= 20
    for lang in LANGS:
        s = schema[lang]
        assert 8 <= len(s["re"]) <= 12 and 5 <= len(s["ee"]) <= 6
        used_rel = {x["relation"] for r in records if r["lang"] == lang for x in r["relations"]}
        used_ev = {e["type"] for r in records if r["lang"] == lang for e in r["events"]}
        assert used_rel == set(s["re"]) and used_ev == set(s["ee"])  # every label has examples


def test_every_span_occurs_verbatim(records):
    # load_ie_records already enforces this; re-check from the raw file so the test stands alone.
    for line in RECORDS.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        spans = (
            [e["text"] for e in r["entities"]]
            + [x for rel in r["relations"] for x in (rel["head"], rel["tail"])]
            + [ev["trigger"] for ev in r["events"]]
            + [a["text"] for ev in r["events"] for a in ev["arguments"]]
        )
        for span in spans:
            assert span in r["text"], (r["id"], span)
        assert r["lang"] in LANGS


def test_committed_instructions_are_current(records, schema):
    committed = json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))
    assert committed == build_instructions(records, schema, seed=0), (
        "data/sample/ie/instructions.json is stale: regenerate with python -m "
        "knowlm_ray.instruct.kg2instruct --records data/sample/ie/records.jsonl "
        "--schema data/sample/ie/schema.json --out data/sample/ie/instructions.json --seed 0"
    )
    assert len(load_alpaca(INSTRUCTIONS)) == len(committed) >= 300


# ------------------------------------------------------------------------ render and parse


def test_render_parse_round_trip_every_task_lang_format(records):
    seen = set()
    for rec in records:
        for task in TASKS:
            items = rec[FIELD[task]]
            for fmt in FORMATS:
                if fmt == "tuple" and not tuple_safe(items):
                    continue  # the builder writes such records as JSON
                text = render_output(task, rec["lang"], fmt, items)
                got = parse_output(task, rec["lang"], fmt, f"\n  {text}  \n")
                assert canon(task, got[FIELD[task]]) == canon(task, items), (rec["id"], task, fmt, text)
                assert parse_output(task, rec["lang"], "auto", text) == got
                if items:
                    seen.add((task, rec["lang"], fmt))
    assert seen == {(t, lg, f) for t in TASKS for lg in LANGS for f in FORMATS}


def _label(task: str, item: dict) -> str:
    return item["relation"] if task == "re" else item["type"]


def test_built_outputs_parse_back_to_the_record(records, schema):
    """build -> gold text -> parse == the record's items restricted to the batch's labels."""
    by_id = {r["id"]: r for r in records}
    rows = build_instructions(records, schema, seed=0)
    assert {(r["task"], r["lang"], r["format"]) for r in rows} == {
        (t, lg, f) for t in TASKS for lg in LANGS for f in FORMATS
    }
    for row in rows:
        rec = by_id[row["id"]]
        got = parse_output(row["task"], row["lang"], row["format"], row["output"])
        for task in TASKS:  # the batch's part of the task's list comes back; the others stay empty
            want = [x for x in rec[FIELD[task]] if _label(task, x) in row["labels"]] if task == row["task"] else []
            assert canon(task, got[FIELD[task]]) == canon(task, want), (row["id"], row["task"])
        assert row["input"] == rec["text"]
        assert (row["output"] == NONE_ANSWER[row["lang"]]) == (
            not any(_label(row["task"], x) in row["labels"] for x in rec[FIELD[row["task"]]])
        )


def test_instructions_name_labels_and_format(records, schema):
    for row in build_instructions(records, schema, seed=0):
        s = schema[row["lang"]]
        labels = (
            row["labels"] + [r for t in row["labels"] for r in s["ee"][t]] if row["task"] == "ee" else row["labels"]
        )
        assert all(label in row["instruction"] for label in labels)
        others = [lab for lab in (list(s["ee"]) if row["task"] == "ee" else s[row["task"]]) if lab not in row["labels"]]
        assert not any(f'"{lab}"' in row["instruction"] for lab in others)  # only the batch is offered
        assert NONE_ANSWER[row["lang"]] in row["instruction"]
        assert ("JSON" in row["instruction"]) == (row["format"] == "json")


@pytest.mark.parametrize("seed", range(8))
def test_schema_batches_cover_positives_once_with_iepile_sizes(records, schema, seed):
    from knowlm_ray.ie.prompts import SPLIT_NUM, split_sizes

    rows = build_instructions(records, schema, seed=seed, neg_ratio=0.5)
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["id"], row["task"]), []).append(row)
    by_id = {r["id"]: r for r in records}
    none_with_positives = 0
    for (rid, task), batch_rows in groups.items():
        rec = by_id[rid]
        batches = [r["labels"] for r in batch_rows]
        flat = [lab for b in batches for lab in b]
        assert len(flat) == len(set(flat))  # a label is offered once per record and task
        s = schema[rec["lang"]]
        assert set(flat) <= set(s["ee"] if task == "ee" else s[task])
        positives = {_label(task, x) for x in rec[FIELD[task]]}
        assert positives <= set(flat)
        if positives:
            assert [len(b) for b in batches] == split_sizes(len(flat), SPLIT_NUM[task])
            none_with_positives += sum(not (set(b) & positives) for b in batches)
        else:
            assert len(batch_rows) == 1
    if seed == 0:
        assert none_with_positives > 0  # all-negative batches of records that have labels


def test_hard_negatives_are_preferred(schema):
    rec = {
        "id": "h",
        "lang": "en",
        "text": "Ada was born in London.",
        "entities": [],
        "relations": [{"head": "Ada", "relation": "place of birth", "tail": "London"}],
        "events": [],
    }
    hard = {"en": {"place of birth": ["date of birth", "country"]}}
    for seed in range(5):
        rows = build_instructions([rec], schema, seed=seed, tasks=("re",), neg_ratio=0.0, hard_negatives=hard)
        assert sorted(lab for r in rows for lab in r["labels"]) == ["country", "date of birth", "place of birth"]
    # from the schema file's own map
    with_map = {**schema, "en": {**schema["en"], "hard_negatives": hard["en"]}}
    (row,) = build_instructions([rec], with_map, seed=1, tasks=("re",), neg_ratio=0.0)
    assert sorted(row["labels"]) == ["country", "date of birth", "place of birth"]
    # no map: labels co-occurring with the record's labels in other records
    other = dict(rec, id="o", relations=rec["relations"] + [{"head": "Ada", "relation": "employer", "tail": "London"}])
    rows = build_instructions([rec, other], schema, seed=2, tasks=("re",), neg_ratio=0.0)
    assert sorted(rows[0]["labels"]) == ["employer", "place of birth"]
    # every other label at neg_ratio 1: the whole schema in IEPile batches (11 -> 4, 4, 3)
    rows = build_instructions([rec], schema, seed=3, tasks=("re",), neg_ratio=1.0, hard_negatives={})
    assert [len(r["labels"]) for r in rows] == [4, 4, 3]
    assert sum(r["output"] != "None" for r in rows) == 1


def test_every_record_yields_its_labelled_tasks_and_some_negatives(records, schema):
    rows = build_instructions(records, schema, seed=0)
    have = {(r["id"], r["task"]) for r in rows}
    for rec in records:
        for task in TASKS:
            if rec[FIELD[task]]:
                assert (rec["id"], task) in have
    empty = [r for r in rows if r["output"] == NONE_ANSWER[r["lang"]]]
    assert {r["task"] for r in empty} == set(TASKS) and {r["lang"] for r in empty} == set(LANGS)
    assert len(rows) >= 300


def test_parse_is_tolerant():
    for lang in LANGS:
        for task in TASKS:
            for fmt in (*FORMATS, "auto"):
                for none in ("无", " None \n", "none", "", "  "):
                    assert parse_output(task, lang, fmt, none) == {"entities": [], "relations": [], "events": []}
    got = parse_output("ner", "zh", "tuple", "答案如下：\n( 鲁迅 , 人物 )\n(坏行\n(周树人,人物)")
    assert got["entities"] == [{"text": "鲁迅", "type": "人物"}, {"text": "周树人", "type": "人物"}]
    assert parse_output("re", "en", "json", "{not json")["relations"] == []
    got = parse_output(
        "ee", "en", "json", '{"award": [{"trigger": "won", "arguments": {"winner": "A", "date": "NAN"}}]}'
    )
    assert got["events"] == [{"type": "award", "trigger": "won", "arguments": [{"role": "winner", "text": "A"}]}]
    got = parse_output("ee", "zh", "tuple", "(地震,地震,[])")
    assert got["events"] == [{"type": "地震", "trigger": "地震", "arguments": []}]


def test_spans_with_tuple_syntax_fall_back_to_json(schema):
    rec = {
        "id": "x",
        "lang": "en",
        "text": "Microsoft is headquartered in Redmond, Washington.",
        "entities": [{"text": "Redmond, Washington", "type": "location"}],
        "relations": [],
        "events": [],
    }
    for seed in range(6):  # some seed picks "tuple" for the record
        (row,) = build_instructions([rec], schema, seed=seed, tasks=("ner",))
        assert row["format"] == "json"
        assert parse_output("ner", "en", "json", row["output"])["entities"] == rec["entities"]


# ----------------------------------------------------------------------------- determinism


def test_deterministic_for_a_seed(records, schema):
    import random

    random.seed(123)
    a = build_instructions(records, schema, seed=7)
    random.seed(999)  # the global stream must not matter
    b = build_instructions(records, schema, seed=7)
    assert a == b
    c = build_instructions(records, schema, seed=8)
    assert len(a) != len(c) or any(x != y for x, y in zip(a, c))
    templates = {(r["task"], r["lang"], r["instruction"].split("[")[0].split("{")[0]) for r in a}
    for task in TASKS:
        for lang in LANGS:
            assert sum(1 for t in templates if t[:2] == (task, lang)) >= 3  # template variety


# ---------------------------------------------------------------------------------- errors


def _good(i: int) -> str:
    return json.dumps(
        {
            "id": f"r{i}",
            "lang": "en",
            "text": "Ada lived in London.",
            "entities": [{"text": "Ada", "type": "person"}],
            "relations": [],
            "events": [],
        }
    )


@pytest.mark.parametrize(
    "bad, why",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        (
            '{"id": "r9", "text": "Ada lived in London.", "entities": [{"text": "Paris", "type": "location"}]}',
            "does not occur in the text",
        ),
        (
            '{"id": "r9", "text": "Ada lived in London.", "events": [{"type": "award", "trigger": "lived", '
            '"arguments": [{"role": "winner", "text": "Bob"}]}]}',
            "events[0].arguments[0].text",
        ),
        ('{"text": "no id here"}', "'id'"),
        ('{"id": "r9", "text": "t", "relations": {}}', "'relations' is not a list"),
        (_good(0), "duplicate id"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, bad, why):
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join([_good(0), _good(1), "", bad, _good(2)]) + "\n", encoding="utf-8")
    with pytest.raises(RecordError) as exc:
        load_ie_records(path)
    assert f"{path}:4:" in str(exc.value) and why in str(exc.value)


def test_missing_files_and_bad_schema(tmp_path, schema, records):
    with pytest.raises(RecordError, match="not found"):
        load_ie_records(tmp_path / "nope.jsonl")
    with pytest.raises(RecordError, match="not found"):
        load_schema(tmp_path / "nope.json")
    bad = tmp_path / "schema.json"
    bad.write_text(json.dumps({"en": {"ner": ["person"], "re": "capital", "ee": {}}}), encoding="utf-8")
    with pytest.raises(RecordError, match=r"schema.json: en.re"):
        load_schema(bad)
    rec = dict(records[0], entities=[{"text": records[0]["text"][:2], "type": "animal"}])
    with pytest.raises(ValueError, match=rf"{rec['id']}.*'animal'"):
        build_instructions([rec], schema)


def test_main_writes_the_file_atomically(tmp_path, records, schema, capsys):
    out = tmp_path / "sub" / "inst.json"
    assert main(["--records", str(RECORDS), "--schema", str(SCHEMA), "--out", str(out), "--seed", "3"]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == build_instructions(records, schema, seed=3)
    assert [p.name for p in out.parent.iterdir()] == ["inst.json"]  # no temp file left behind
    assert "wrote" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_good(0) + "\n{oops\n", encoding="utf-8")
    assert main(["--records", str(bad), "--schema", str(SCHEMA), "--out", str(tmp_path / "x.json")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------- the serving prompt (--serve-prompt)


def test_serve_prompt_rows_are_the_prompts_extract_sends(records, schema):
    """Training rows in /extract's prompt: same (instruction, input) pairs as plan_extraction, in
    order, each answered with exactly the record's items of that schema batch."""
    from knowlm_ray.ie.extract import plan_extraction

    picked = [r for r in records if r["lang"] == "zh"][:3] + [r for r in records if r["lang"] == "en"][:3]
    long_text = {**picked[0], "id": "long", "text": picked[0]["text"] * 30}  # several text chunks
    picked.append(long_text)
    rows = build_serve_instructions(picked, schema)
    by_record_task = {}
    for row in rows:
        by_record_task.setdefault((row["id"], row["task"]), []).append(row)
    for rec in picked:
        for task in TASKS:
            plan = plan_extraction(task, rec["text"], schema[rec["lang"]][task], rec["lang"])
            got = by_record_task[(rec["id"], task)]
            assert [(r["instruction"], r["input"]) for r in got] == plan.pairs
            assert all(r["format"] == "json" for r in got)
            for row, prompt in zip(got, plan.prompts):
                want = [
                    x
                    for x in rec[FIELD[task]]
                    if (x["type"] if task != "re" else x["relation"]) in set(prompt["labels"])
                    and (x["text"] if task == "ner" else x["head"] if task == "re" else x["trigger"]) in prompt["input"]
                ]
                assert canon(task, parse_output(task, rec["lang"], "json", row["output"])[FIELD[task]]) == canon(
                    task, want
                )
    assert len(by_record_task[("long", "ner")]) > 1  # the long text was chunked as /extract chunks it


def test_main_serve_prompt_lang_and_limit(tmp_path, records, schema, capsys):
    out = tmp_path / "ner_zh.json"
    assert (
        main(
            [
                "--records",
                str(RECORDS),
                "--schema",
                str(SCHEMA),
                "--out",
                str(out),
                "--serve-prompt",
                "--tasks",
                "ner",
                "--lang",
                "zh",
                "--limit",
                "5",
            ]
        )
        == 0
    )
    zh = [r for r in records if r["lang"] == "zh"][:5]
    assert json.loads(out.read_text(encoding="utf-8")) == build_serve_instructions(zh, schema, ("ner",))
    assert "wrote 5 instructions from 5 records" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--records", str(RECORDS), "--schema", str(SCHEMA), "--out", str(out), "--limit", "0"])
    assert "--limit must be >= 1" in capsys.readouterr().err
