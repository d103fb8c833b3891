"""prepare_instructions: masked shards, a stable seeded split, quarantine, byte-identical re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from knowlm_ray.alpaca import IGNORE_INDEX, build_prompt
from knowlm_ray.config import InstructionsConfig, load_config
from knowlm_ray.instruct.prepare import INSTRUCTION_SCHEMA, assign, read_alpaca, run, split_groups

REPO = Path(__file__).resolve().parents[2]
IE = REPO / "data" / "sample" / "ie"


def _alpaca_inputs(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    good = [
        {
            "id": f"g{i // 2}",
            "task": "general",
            "instruction": f"Say hello number {i}.",
            "input": "" if i % 3 else f"context {i}",
            "output": f"Hello {i}!",
        }
        for i in range(10)
    ]
    jl = d / "a.jsonl"
    lines = [json.dumps(r) for r in good[:6]]
    lines[2:2] = [
        "{broken",
        json.dumps({"instruction": "no output"}),
        "",
        json.dumps({"instruction": "blank", "output": "  "}),
    ]
    jl.write_text("\n".join(lines) + "\n", encoding="utf-8")  # bad at lines 3 and 4, empty at 6
    js = d / "b.json"
    js.write_text(
        "[\n" + ",\n".join([json.dumps(good[6]), '"just a string"', *map(json.dumps, good[7:])]) + "\n]\n",
        encoding="utf-8",
    )  # bad element at line 3
    ie = d / "ie.jsonl"
    recs = (IE / "records.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    bad_ie = json.dumps({"id": "bad", "lang": "en", "text": "Ada.", "entities": [{"text": "Bob", "type": "person"}]})
    ie.write_text("\n".join(recs[:3] + [bad_ie] + recs[3:]) + "\n", encoding="utf-8")  # bad at line 4
    return [jl, js, ie]


def test_read_alpaca_quarantines_with_file_and_line(tmp_path):
    jl, js, _ = _alpaca_inputs(tmp_path)
    bad: list[dict] = []
    recs = read_alpaca(jl, bad) + read_alpaca(js, bad)
    assert [(Path(b["file"]).name, b["line"]) for b in bad] == [("a.jsonl", 3), ("a.jsonl", 4), ("b.json", 3)]
    assert "invalid JSON" in bad[0]["reason"] and "'output'" in bad[1]["reason"]
    assert len(recs) == 11 and sum(bool(r.get("empty")) for r in recs) == 1
    assert [r["group"] for r in recs[:2]] == ["g0", "g0"]


def test_split_is_seeded_stable_and_grouped():
    groups = {f"r{i}": 1 + i % 3 for i in range(200)}
    val = split_groups(groups, 40, seed=0)
    assert val == split_groups(dict(reversed(list(groups.items()))), 40, seed=0)  # order-free
    assert val != split_groups(groups, 40, seed=1)
    rows = sum(groups[g] for g in val)
    assert 40 <= rows < 40 + 3
    recs = [
        {"group": g, "task": "t", "instruction": "i", "input": "", "output": g}
        for g, n in groups.items()
        for _ in range(n)
    ]
    out = assign(recs, 40, seed=0)
    assert len({r["id"] for r in out}) == len(out)
    by_group: dict = {}
    for r in out:
        by_group.setdefault(r["id"].split("#")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())  # a record's rows never straddle the split
    assert sum(r["split"] == "validation" for r in out) == rows


def test_config_file_and_errors():
    cfg = load_config(InstructionsConfig, REPO / "jobs" / "configs" / "tiny_instructions.yaml")
    assert cfg.val_set_size == 40 and cfg.inputs == [str(IE / "instructions.json")]
    assert cfg.cutoff_len == 512 and cfg.train_on_inputs is False
    with pytest.raises(Exception, match="ie_records needs schema"):
        InstructionsConfig(tokenizer="t", ie_records="r.jsonl")
    with pytest.raises(Exception, match="give inputs"):
        InstructionsConfig(tokenizer="t")


def _read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def test_prepare_on_ray(ray_local, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from knowlm_ray.ie.records import load_ie_records, load_schema
    from knowlm_ray.instruct.kg2instruct import build_instructions

    jl, js, ie = _alpaca_inputs(tmp_path / "in")
    cfg = InstructionsConfig(
        inputs=[str(jl), str(js)],
        ie_records=str(ie),
        schema=str(IE / "schema.json"),
        tokenizer=str(tiny_model),
        val_set_size=6,
        rows_per_shard=8,
        out_dir=str(tmp_path / "out"),
    )
    m = run(cfg)
    out = tmp_path / "out"
    # quarantine: 3 alpaca + 1 IE record, each with file:line; 1 blank response dropped
    q = [json.loads(x) for x in (out / "quarantine" / "malformed.jsonl").read_text().splitlines()]
    assert m["dropped"]["malformed"] == 4 == len(q)
    assert (Path(q[-1]["file"]).name, q[-1]["line"]) == ("ie.jsonl", 4) and "does not occur" in q[-1]["reason"]
    assert m["dropped"]["empty_response"] == 1 and m["dropped"]["cut_off"] == 0

    # the layout the LoRA trainer reads, and the manifest's counts
    files = {s: sorted((out / s).glob("part-*.arrow")) for s in ("train", "validation")}
    tables = {s: pa.concat_tables([_read(f) for f in fs]) for s, fs in files.items()}
    assert all(_read(f).schema.equals(INSTRUCTION_SCHEMA) for fs in files.values() for f in fs)
    assert all(_read(f).num_rows <= 8 for fs in files.values() for f in fs) and len(files["train"]) >= 2
    assert [s["file"] for s in m["shards"]] == [f"{s}/{f.name}" for s in files for f in files[s]]
    for s, t in tables.items():
        assert m["splits"][s]["rows"] == t.num_rows
        assert m["splits"][s]["tokens"] == sum(len(x) for x in t["input_ids"].to_pylist())
        assert m["splits"][s]["label_tokens"] == sum(x != IGNORE_INDEX for row in t["labels"].to_pylist() for x in row)
    ie_rows = build_instructions(
        [r for r in load_ie_records(IE / "records.jsonl")[:6]], load_schema(IE / "schema.json")
    )
    assert sum(t.num_rows for t in tables.values()) == 10 + len(ie_rows)

    # split: disjoint by source record, validation holds >= val_set_size rows
    groups = {s: {i.split("#")[0] for i in t["id"].to_pylist()} for s, t in tables.items()}
    assert not groups["train"] & groups["validation"]
    assert tables["validation"].num_rows >= 6
    assert set(tables["train"]["task"].to_pylist()) | set(tables["validation"]["task"].to_pylist()) == {
        "general",
        "ner",
        "re",
        "ee",
    }

    # masking: labels are -100 exactly over BOS + prompt, then equal the ids (EOS included)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    src = {r["id"]: r for r in assign(read_alpaca(jl, []) + read_alpaca(js, []), 0, 0)}
    checked = 0
    for t in tables.values():
        for row in t.to_pylist():
            if row["id"] not in src or row["task"] != "general":
                continue
            rec = src[row["id"]]
            n = len(tok(build_prompt(rec["instruction"], rec["input"]))["input_ids"])
            assert row["labels"][:n] == [IGNORE_INDEX] * n
            assert row["labels"][n:] == row["input_ids"][n:] and IGNORE_INDEX not in row["labels"][n:]
            assert row["input_ids"][-1] == tok.eos_token_id
            assert tok.decode(row["input_ids"][n:-1]).strip() == rec["output"]
            checked += 1
    assert checked == 10

    # byte-identical re-run (into the same out_dir, replaced atomically: no temp dirs left)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert run(cfg) == m
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


HOSTILE = [  # (line, reason the quarantine gives)
    (b'{"instruction": "caf\xe9", "output": "latin-1 bytes"}', "not valid UTF-8"),
    (b'{"instruction": "deep", "output": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid JSON: nested too deeply"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
    (b'{"instruction": 7, "output": "a number for text"}', "field 'instruction' is missing or not a string"),
    (b'[{"instruction": "a list", "output": "for a record"}]', "expected an object"),
    (b'{"instruction": "half \\udc80 a pair", "output": "x"}', "not valid UTF-8"),
    (b'{"instruction": "i", "input": {"a": 1}, "output": "x"}', "field 'input' is not a string"),
]


def _good(i: int) -> dict:
    return {"id": f"ok{i}", "instruction": f"Say hello number {i}.", "input": "", "output": f"Hello {i}!"}


def test_hostile_lines_are_quarantined_never_fatal(tmp_path):
    lines = []
    for i, (line, _) in enumerate(HOSTILE):
        lines += [json.dumps(_good(i)).encode(), line]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    bad: list[dict] = []
    recs = read_alpaca(tmp_path / "a.jsonl", bad)
    assert [r["group"] for r in recs] == [f"ok{i}" for i in range(len(HOSTILE))]  # every good line kept
    assert [b["line"] for b in bad] == list(range(2, 2 * len(HOSTILE) + 1, 2))
    for b, (_, reason) in zip(bad, HOSTILE):
        assert reason in b["reason"], (b["line"], b["reason"])
        b["record"].encode("utf-8")  # the quarantine file can hold it
    # a JSON list file: an invalid byte or a too-deep element costs that element only
    body = [json.dumps(_good(10)).encode(), HOSTILE[0][0], HOSTILE[1][0], HOSTILE[2][0], json.dumps(_good(11)).encode()]
    (tmp_path / "b.json").write_bytes(b"[\n" + b",\n".join(body) + b"\n]\n")
    bad = []
    recs = read_alpaca(tmp_path / "b.json", bad)
    assert [r["group"] for r in recs] == ["ok10", "ok11"]
    assert [(b["line"], b["reason"].split(" (")[0]) for b in bad] == [
        (3, "not valid UTF-8"),
        (4, "invalid JSON: nested too deeply"),
        (5, "invalid JSON: nested too deeply"),
    ]


def test_hostile_ie_records_are_quarantined(tmp_path):
    from knowlm_ray.ie.records import iter_ie_records

    good = (IE / "records.jsonl").read_bytes().splitlines()[:4]
    hostile = [
        b'{"id": "x1", "text": "caf\xe9"}',
        b'{"id": "x2", "text": "deep", "entities": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": "x3", "text": 12}',
        b'[{"id": "x4", "text": "a list"}]',
        b'{"id": "x5", "text": "half \\ud800 a pair"}',
    ]
    (tmp_path / "ie.jsonl").write_bytes(b"\n".join(x for pair in zip(good, hostile) for x in pair) + b"\n" + hostile[4])
    got = list(iter_ie_records(tmp_path / "ie.jsonl"))
    assert [n for n, _, rec, _ in got if rec is not None] == [1, 3, 5, 7]
    assert [(n, err.split(" (")[0]) for n, _, rec, err in got if rec is None] == [
        (2, "not valid UTF-8"),
        (4, "invalid JSON: nested too deeply"),
        (6, "field 'text' is missing or not a non-empty string"),
        (8, "expected a JSON object, got list"),
        (9, "not valid UTF-8"),
    ]
