"""Alpaca records: KnowLM's exact prompt text, prompt masking, and the loader's errors."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.alpaca import (
    IGNORE_INDEX,
    RecordError,
    build_prompt,
    extract_response,
    load_alpaca,
    tokenize_record,
    tokenize_records,
)

# Written out literally (not imported) so a drift in alpaca.py's constants fails here.
KNOWLM_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nList the people.\n\n### Input:\nAda met Alan.\n\n### Response:\n"
)
KNOWLM_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
)

REC = {
    "instruction": '请从输入文本中抽取实体，候选的实体类型为["人物"]。',
    "input": "鲁迅原名周树人。",
    "output": "(鲁迅,人物)\n(周树人,人物)",
}


def test_prompt_matches_knowlm_template():
    assert build_prompt("List the people.", "Ada met Alan.") == KNOWLM_WITH_INPUT
    assert build_prompt("Say hi.") == KNOWLM_NO_INPUT
    assert build_prompt("Say hi.", "") == KNOWLM_NO_INPUT  # empty input = the no-input template
    assert build_prompt("Say hi.", None, "Hi!") == KNOWLM_NO_INPUT + "Hi!"
    assert extract_response(KNOWLM_NO_INPUT + " Hi!  ") == "Hi!"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("rec", [REC, {"instruction": "Say hi.", "input": "", "output": "Hi there!"}])
def test_tokenize_masks_exactly_the_prompt(tokenizer, rec):
    prompt_ids = tokenizer(build_prompt(rec["instruction"], rec["input"]))["input_ids"]
    row = tokenize_record(tokenizer, rec, cutoff_len=512)
    ids, labels = row["input_ids"], row["labels"]
    n = len(prompt_ids)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids[:n] == prompt_ids  # the prompt tokenises the same alone and inside the full text
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == ids[n:] and IGNORE_INDEX not in labels[n:]
    assert tokenizer.decode(ids[n:-1]).strip() == rec["output"]  # the learned part is the answer
    assert tokenize_record(tokenizer, rec, 512, train_on_inputs=True)["labels"] == ids


def test_tokenize_cutoff_and_dropping(tokenizer):
    full = tokenize_record(tokenizer, REC, cutoff_len=512)["input_ids"]
    cut = tokenize_record(tokenizer, REC, cutoff_len=len(full) - 3)
    assert cut["input_ids"] == full[: len(full) - 3]  # truncated: no EOS appended (as KnowLM)
    n_prompt = len(tokenizer(build_prompt(REC["instruction"], REC["input"]))["input_ids"])
    # A cutoff inside the prompt leaves nothing to learn: tokenize_records drops that row.
    assert tokenize_records(tokenizer, [REC], cutoff_len=n_prompt - 1) == []
    assert len(tokenize_records(tokenizer, [REC, REC], cutoff_len=512)) == 2


def test_load_alpaca_json_jsonl_and_dir(tmp_path):
    rows = [REC, {"instruction": "Say hi.", "output": "Hi!"}]  # input is optional
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8"
    )
    want = [REC, {"instruction": "Say hi.", "input": "", "output": "Hi!"}]
    assert load_alpaca(tmp_path / "a.json") == want
    assert load_alpaca(tmp_path / "b.jsonl") == want
    assert load_alpaca(tmp_path) == want + want


def test_load_alpaca_errors_name_file_and_line(tmp_path):
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps(REC) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{jl}:2: invalid JSON"):
        load_alpaca(jl)
    jl.write_text(json.dumps(REC) + "\n\n" + json.dumps({"instruction": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{jl}:3: field 'output'"):
        load_alpaca(jl)
    jl.write_text(json.dumps({"instruction": "x", "input": 3, "output": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{jl}:1: field 'input'"):
        load_alpaca(jl)
    js = tmp_path / "bad.json"
    js.write_text('[\n {"instruction": "x", "output": "y"},\n {"instruction": \n]', encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{js}: invalid JSON at line 4"):
        load_alpaca(js)
    js.write_text(json.dumps([REC, "just a string"]), encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{js}\[1\]: expected an object"):
        load_alpaca(js)
    with pytest.raises(RecordError, match="not found"):
        load_alpaca(tmp_path / "missing.json")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(RecordError, match="no .json/.jsonl files"):
        load_alpaca(empty)
