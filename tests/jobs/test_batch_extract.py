"""batch_extract: deterministic blocks, the plain core, and one Ray Data run that resumes a killed run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knowlm_ray.config import BatchExtractConfig, ConfigError, load_config
from knowlm_ray.ie.batch import PART, check_state, finalize, plan_blocks, read_block, run_sequential

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "ie"


def _corpus(path: Path, n: int = 13) -> list[dict]:
    """n sample IE texts as a jsonl corpus, plus a blank line and a malformed line in the middle."""
    recs = [json.loads(line) for line in (SAMPLE / "records.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    lines = [json.dumps({"id": r["id"], "text": r["text"], "lang": r["lang"]}, ensure_ascii=False) for r in recs]
    lines.insert(5, "")
    lines.insert(7, '{"id": "broken", "text": ')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recs


def _cfg(tmp_path: Path, **kw) -> BatchExtractConfig:
    base = {
        "model": str(tmp_path / "model"),
        "input": str(tmp_path / "docs.jsonl"),
        "schema": str(SAMPLE / "schema.json"),
        "out_dir": str(tmp_path / "kg"),
        "block_size": 4,
        "tasks": ["ner", "re"],
    }
    return BatchExtractConfig.model_validate({**base, **kw})


def _job_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_extract_job", REPO / "jobs" / "batch_extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def alpaca_halves(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a whole alpaca prompt: what a generate_fn now receives."""
    rest = prompt.partition("### Instruction:\n")[2]
    instruction, _, rest = rest.partition("\n\n### Input:\n")
    return instruction, rest.rsplit("\n\n### Response:\n", 1)[0]


def canned(pairs):
    """A test double of the model: a fixed person entity and relation, whatever it is asked."""
    out = []
    for instruction, _text in map(alpaca_halves, pairs):
        if "关系" in instruction or "relation" in instruction:
            out.append("(CANNED,出生地,CANNED)\n(CANNED,place of birth,CANNED)")
        else:
            out.append('{"人物": ["CANNED"], "person": ["CANNED"]}')
    return out


def test_blocks_cover_every_line_once(tmp_path):
    recs = _corpus(tmp_path / "docs.jsonl")
    cfg = _cfg(tmp_path)
    blocks = plan_blocks(cfg)
    assert [b["block"] for b in blocks] == [0, 1, 2, 3]  # 14 non-blank lines / 4
    assert plan_blocks(cfg) == blocks  # deterministic
    docs, skipped = [], {"malformed": 0}
    for b in blocks:
        d, s = read_block(b, cfg)
        docs += d
        skipped["malformed"] += s.get("malformed", 0)
    assert [d["id"] for d in docs] == [r["id"] for r in recs] and skipped == {"malformed": 1}
    assert [d["lang"] for d in docs] == [r["lang"] for r in recs]
    limited = plan_blocks(_cfg(tmp_path, limit=8))
    assert sum(len(read_block(b, cfg)[0]) for b in limited) == 7  # 8 non-blank lines, one malformed
    # no id field: file stem + line number
    (tmp_path / "noid.jsonl").write_text('{"text": "鲁迅"}\n{"text": "周树人"}\n', encoding="utf-8")
    (b,) = plan_blocks(_cfg(tmp_path, input=str(tmp_path / "noid.jsonl")))
    assert [d["id"] for d in read_block(b, cfg)[0]] == ["noid:1", "noid:2"]


def test_corpus_shards_are_decoded(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from knowlm_ray.corpus.schema import SHARD_SCHEMA

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["鲁迅，原名周树人。", "Marie Curie was born in Warsaw.", "浙江大学位于杭州市。"]
    shards = tmp_path / "corpus" / "shards"
    shards.mkdir(parents=True)
    table = pa.table(
        {"input_ids": [tok(t)["input_ids"] for t in texts], "doc_id": ["a", "b", "c"], "source": ["s"] * 3},
        schema=SHARD_SCHEMA,
    )
    with pa.OSFile(str(shards / "part-00000.arrow"), "wb") as sink, pa.ipc.new_file(sink, SHARD_SCHEMA) as w:
        w.write_table(table)
    cfg = _cfg(tmp_path, input=str(tmp_path / "corpus"), block_size=2)
    blocks = plan_blocks(cfg)
    assert [(b["kind"], b["start"], b["end"]) for b in blocks] == [("shards", 0, 2), ("shards", 2, 3)]
    docs = [d for b in blocks for d in read_block(b, cfg, tok)[0]]
    assert [d["text"] for d in docs] == texts and [d["lang"] for d in docs] == ["zh", "en", "zh"]
    assert docs[0]["id"] == "a@part-00000:0"


def test_settings_change_is_refused(tmp_path):
    _corpus(tmp_path / "docs.jsonl")
    cfg = _cfg(tmp_path)
    (tmp_path / "kg").mkdir()
    check_state(cfg, 4)
    check_state(cfg, 4)  # same settings: fine
    with pytest.raises(ConfigError, match="block_size"):
        check_state(_cfg(tmp_path, block_size=5), 3)
    with pytest.raises(ConfigError, match="tasks"):
        check_state(_cfg(tmp_path, tasks=["ner"]), 4)
    with (tmp_path / "docs.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"text": "an edited input"}\n')
    with pytest.raises(ConfigError, match="input_bytes"):
        check_state(cfg, 4)
    with pytest.raises(RuntimeError, match="no part file"):
        finalize(tmp_path / "kg", 4)


@pytest.mark.slow
def test_killed_run_resumes_each_record_once(tmp_path, tiny_model, ray_local, capsys):
    """An earlier run finished block 1 (canned answers) and died writing block 2; the Ray Data run
    with 2 model actors does blocks 0, 2, 3 only; a third run does nothing and changes nothing."""
    main = _job_main()  # the recipe, as a user runs it

    recs = _corpus(tmp_path / "docs.jsonl")
    overrides = [
        f"model={tiny_model}",
        f"input={tmp_path / 'docs.jsonl'}",
        f"out_dir={tmp_path / 'kg'}",
        "block_size=4",
        "num_actors=2",
        "max_tokens=6",
        "docs_per_call=4",
    ]
    cfg = load_config(BatchExtractConfig, REPO / "jobs" / "configs" / "tiny_extract.yaml", overrides)
    blocks = plan_blocks(cfg)
    run_sequential(cfg, canned, blocks=[blocks[1]])  # the killed run's finished block
    parts = tmp_path / "kg" / "parts"
    stale = parts / f".{PART.format(2)}.abc.tmp"
    stale.write_text('{"id": "half-written"', encoding="utf-8")
    done_before = (parts / PART.format(1)).read_bytes()
    mtime = os.stat(parts / PART.format(1)).st_mtime_ns

    summary = main(["--config", str(REPO / "jobs" / "configs" / "tiny_extract.yaml"), *overrides])
    assert summary["blocks_run"] == 3 and summary["blocks_skipped"] == 1 and summary["num_actors"] == 2
    assert summary["actors_used"] in (1, 2)  # 2 started; on a loaded box one may take all 3 blocks
    assert (parts / PART.format(1)).read_bytes() == done_before and os.stat(parts / PART.format(1)).st_mtime_ns == mtime
    assert not stale.exists()
    out = tmp_path / "kg"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in recs]  # each exactly once, input order
    for r in records:
        assert {"id", "text", "entities", "relations", "events", "raw", "dropped"} <= set(r)
        assert len(r["raw"]) == 1 + 3  # NER: 5 labels = 1 prompt; RE: 11 labels = 3 prompts (4, 4, 3)
    canned_ids = {r["id"] for r in records if any(e["text"] == "CANNED" for e in r["entities"])}
    assert canned_ids == {r["id"] for r in recs[4:7]}  # block 1: non-blank lines 5-8, one broken
    triples = pq.read_table(out / "triples.parquet")
    assert triples.column_names[:4] == ["doc_id", "head", "relation", "tail"]
    assert triples.num_rows == summary["triples"] == summary["relations"] >= 3
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["documents"] == 13 and saved["malformed"] == 1 and saved["duplicate_ids"] == 0
    assert saved["entity_types"].get("人物", 0) + saved["entity_types"].get("person", 0) >= 3
    assert saved["relation_types"].get("出生地", 0) + saved["relation_types"].get("place of birth", 0) >= 3
    row = triples.to_pylist()[0]
    assert row["head"] == "CANNED" and row["head_type"] in ("人物", "person") and row["head_start"] is None

    first = (out / "records.jsonl").read_bytes()
    again = main(["--config", str(REPO / "jobs" / "configs" / "tiny_extract.yaml"), *overrides])
    assert again["blocks_run"] == 0 and again["blocks_skipped"] == 4
    assert (out / "records.jsonl").read_bytes() == first
    assert "documents" in capsys.readouterr().err
