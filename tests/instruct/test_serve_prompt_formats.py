"""Serve-prompt training rows in each prompt format: a LoRA is trained on exactly the prompts
``/extract`` sends it in that format (``knowlm serve --prompt-format F``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowlm_ray.alpaca import build_prompt, is_iepile_record, validate_record
from knowlm_ray.ie.extract import plan_extraction
from knowlm_ray.ie.parsers import TASKS
from knowlm_ray.ie.records import load_ie_records, load_schema
from knowlm_ray.instruct.kg2instruct import build_serve_instructions, main

IE = Path(__file__).resolve().parents[2] / "data" / "sample" / "ie"


@pytest.fixture(scope="module")
def sample():
    records = load_ie_records(IE / "records.jsonl")
    picked = [r for r in records if r["lang"] == "zh"][:2] + [r for r in records if r["lang"] == "en"][:2]
    return picked, load_schema(IE / "schema.json")


@pytest.mark.parametrize("fmt", ["zhixi", "oneke"])
def test_rows_carry_the_prompts_extract_sends_in_that_format(sample, fmt):
    records, schema = sample
    rows = build_serve_instructions(records, schema, prompt_format=fmt)
    for rec in records:
        for task in TASKS:
            plan = plan_extraction(task, rec["text"], schema[rec["lang"]][task], rec["lang"], prompt_format=fmt)
            got = [r for r in rows if r["id"] == rec["id"] and r["task"] == task]
            assert [r["prompt"] for r in got] == plan.texts
            for r in got:
                if fmt == "zhixi":  # plain alpaca rows: the alpaca template rebuilds the same prompt
                    assert build_prompt(r["instruction"], r["input"]) == r["prompt"]
                    assert set(validate_record(r, "row")) == {"instruction", "input", "output", "prompt"}
                else:  # IEPile records: prepare_instructions trains them in OneKE's prompt
                    assert is_iepile_record(r) and isinstance(json.loads(r["output"]), dict)


def test_cli_prompt_format_needs_serve_prompt(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["--records", str(IE / "records.jsonl"), "--schema", str(IE / "schema.json"), "--out", str(out)]
    assert main([*args, "--serve-prompt", "--prompt-format", "zhixi", "--limit", "2"]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert rows and all(r["prompt_format"] == "zhixi" for r in rows)
    with pytest.raises(SystemExit):
        main([*args, "--prompt-format", "zhixi"])
    assert "--serve-prompt" in capsys.readouterr().err
    # oneke serving rows are IEPile records, one per line (prepare_instructions reads them)
    jl = tmp_path / "rows.jsonl"
    assert main([*args[:-1], str(jl), "--serve-prompt", "--format", "oneke", "--limit", "2"]) == 0
    lines = [json.loads(x) for x in jl.read_text(encoding="utf-8").splitlines()]
    assert lines and all(is_iepile_record(r) for r in lines)


def test_json_answers_list_keys_in_the_prompts_label_order():
    """Constrained decoding lets a JSON answer's keys come only in the batch's label order, so
    the rows a LoRA learns from write them in that order too (not in gold-item order)."""
    from knowlm_ray.instruct.kg2instruct import build_instructions

    records, schema = load_ie_records(IE / "records.jsonl"), load_schema(IE / "schema.json")
    rows = build_serve_instructions(records, schema) + build_instructions(records, schema, seed=1)
    checked = 0
    for r in rows:
        if r["format"] != "json" or not r["output"].startswith("{"):
            continue
        keys = list(json.loads(r["output"]))
        assert keys == [lab for lab in r["labels"] if lab in keys], (r["id"], r["labels"], keys)
        checked += len(keys) > 1
    assert checked > 10
