"""The whole pipeline on a local Ray: counts, quarantine, round trip, determinism, replacement,
near dedup, greedy packing, and data/sample's documented counts.

Ray Data costs seconds per pipeline on 2 cores, so the pipeline runs three times in this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from knowlm_ray.config import ConfigError, CorpusConfig
from knowlm_ray.corpus.samples import load_tokenizer
from knowlm_ray.corpus.shards import read_shards, shard_files

from .conftest import SAMPLE_NEAR_DUPS, tiny_corpus_config

ZH_A = {
    "title": "知识图谱",
    "content": "知识图谱是一种结构化的语义知识库。它以符号形式描述物理世界中的概念及其相互关系！"
    "“你好。”他说。大语言模型通过预训练学习语言知识；指令微调让它更好地遵循人类指令。",
}
ZH_B = {"title": "浙江大学", "content": "浙江大学位于杭州市。今天天气很好！明天会下雨吗？"}
EN_A = {
    "title": "Foxes",
    "text": "The quick brown fox jumps over the lazy dog. Mr. Smith paid $3.50 for it! "
    "Dr. Watson lives in the U.S. and works at Baker Street.",
}
BOOK_1 = "Knowledge graphs describe entities and the relations between them, e.g. people and places."
BOOK_2 = "It is 3.14 miles away. The quick brown fox jumps over the lazy dog again and again."
BOOK_3 = (
    "The lighthouse keeper climbed the hundred and twelve steps every evening at dusk, trimmed the wick, "
    "polished the great lens until it shone, and wrote the state of the sea in a leather-bound log. "
    "In winter the spray froze on the gallery rail, and he chipped it away with a small brass hammer "
    "that had belonged to his father, who had kept the same light for forty years before him. On clear "
    "nights he could see the lamps of the fishing fleet strung out across the bay like beads on a "
    "thread, and he counted them as they came home one by one, and he did not sleep until the last "
    "of them had rounded the point and was safe inside the harbour wall."
)
BOOK_3_NEAR = BOOK_3.replace("small brass", "small iron")
CODE_A = "import os\n\n\nclass Reader:\n    def __init__(self, path):\n        self.path = os.path.abspath(path)\n"
CODE_B = "def tokenize(text):\n    return [t for t in text.split() if t]\n"


def _j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_corpus(root: Path) -> dict:
    """A small corpus with malformed lines, junk and duplicates; returns what should come out."""
    zh = [
        _j(ZH_A),
        _j(ZH_B),
        "",
        '{"title": "坏", "content": ',  # 1 2 (3 blank) 4: bad JSON
        _j({"title": "缺"}),  # 5: missing content
        _j({"title": "ＡＢＣ", "content": "@@@@ #### $$$$ %%%% &&&& **** ^^^^ ~~~~ ||||"}),  # 6: junk
        _j({"title": " 知识图谱\t", "content": ZH_A["content"].replace("！", "!") + " "}),
    ]  # 7: NFKC dup of 1
    en = [
        _j(EN_A),
        _j({"title": "Num", "text": 42}),
        _j({"title": "Hi", "text": "Hi"}),  # 2 bad, 3 short
        _j({"title": "", "text": BOOK_1}),
    ]  # 4: dup of books 1
    root.mkdir(parents=True)
    (root / "zh.jsonl").write_text("\n".join(zh) + "\n", encoding="utf-8")
    (root / "en.jsonl").write_text("\n".join(en) + "\n", encoding="utf-8")
    (root / "books.txt").write_text(
        f"{BOOK_1}\n{BOOK_2}\n{BOOK_1}\n{BOOK_3_NEAR}\n{BOOK_3}\n",  # 3: dup of 1
        encoding="utf-8",
    )  # 4: near-dup of 5
    (root / "code" / "pkg").mkdir(parents=True)
    (root / "code" / "a.py").write_text(CODE_A)
    (root / "code" / "pkg" / "b.py").write_text(CODE_B)
    (root / "code" / "c.py").write_text(CODE_A)  # dup of a.py
    (root / "code" / "README.md").write_text("not code")
    return {
        "docs": {
            "baike/zh.jsonl:000000001": f"{ZH_A['title']}\n{ZH_A['content']}",
            "baike/zh.jsonl:000000002": f"{ZH_B['title']}\n{ZH_B['content']}",
            "wiki/en.jsonl:000000001": f"{EN_A['title']}\n{EN_A['text']}",
            "books/books.txt:000000001": BOOK_1,
            "books/books.txt:000000002": BOOK_2,
            "books/books.txt:000000004": BOOK_3_NEAR,  # the smaller doc_id represents the cluster
            "code/a.py": CODE_A.strip(),
            "code/pkg/b.py": CODE_B.strip(),
        },
        "quarantine": {
            ("zh.jsonl", 4, "invalid JSON"),
            ("zh.jsonl", 5, "missing field 'content'"),
            ("en.jsonl", 2, "field 'text' is int, not a string"),
        },
        "by_source": {
            "baike": {"read": 6, "malformed": 2, "filtered": 1, "exact_dups": 1, "documents": 2},
            "wiki": {"read": 4, "malformed": 1, "filtered": 1, "exact_dups": 1, "documents": 1},
            "books": {"read": 5, "malformed": 0, "filtered": 0, "exact_dups": 1, "near_dups": 1, "documents": 3},
            "code": {"read": 3, "malformed": 0, "filtered": 0, "exact_dups": 1, "documents": 2},
        },
    }


def make_cfg(root: Path, tokenizer: Path, out: Path, **extra) -> CorpusConfig:
    return CorpusConfig.model_validate(
        {
            "inputs": [
                {"path": str(root / "zh.jsonl"), "source": "baike", "lang": "zh", "text_field": ["title", "content"]},
                {"path": str(root / "en.jsonl"), "source": "wiki", "lang": "en", "text_field": ["title", "text"]},
                {"path": str(root / "books.txt"), "source": "books", "lang": "en", "format": "text"},
                {"path": str(root / "code"), "source": "code", "lang": "code", "format": "files", "glob": "**/*.py"},
            ],
            "tokenizer": str(tokenizer),
            "max_tokens": 24,
            "out_dir": str(out),
            "rows_per_shard": 4,
            "filters": {"length": {"min_chars": 10}},
            "dedup": {"near": True},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def first_run(ray_local, corpus_tokenizer, tmp_path_factory):
    from knowlm_ray.corpus.pipeline import run

    base = tmp_path_factory.mktemp("prep")
    expected = write_corpus(base / "raw")
    cfg = make_cfg(base / "raw", corpus_tokenizer, base / "out")
    manifest = run(cfg)
    files = {p.name: p.read_bytes() for p in sorted((base / "out" / "shards").iterdir())}
    return base, cfg, manifest, expected, files


def input_order(inputs):
    """Sort key of the outputs' order: sources as the config lists them, then doc_id (files by
    name, zero-padded lines)."""
    first: dict[str, int] = {}
    for i, src in enumerate(inputs):
        first.setdefault(src["source"] if isinstance(src, dict) else src.source, i)
    return lambda doc_id: (first[doc_id.split("/")[0]], doc_id)


def test_manifest_counts(first_run, corpus_tokenizer):
    base, cfg, manifest, expected, _ = first_run
    assert manifest == json.loads((base / "out" / "manifest.json").read_text())
    tok = load_tokenizer(str(corpus_tokenizer))
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 2 for t in expected["docs"].values())
    stages = manifest["stages"]
    assert stages == {
        "read": 18,
        "malformed": 3,
        "filtered": 2,
        "exact_dups": 4,
        "near_dups": 1,
        "capped": 0,
        "documents": 8,
        "samples": stages["samples"],
        "tokens": n_tokens,
    }
    assert manifest["filters"] == {
        "length": 1,
        "char_ratio": 1,
        "language": 0,
        "repetition": 0,
        "code": 0,
        "blocklist": 0,
        "pii": 0,  # off by default: counted, never dropping
    }
    assert manifest["near_dedup"]["edges"] == 1 and manifest["near_dedup"]["near_dups"] == 1
    assert stages["samples"] == sum(s["rows"] for s in manifest["shards"]) > 7
    for source, want in expected["by_source"].items():
        got = manifest["by_source"][source]
        assert {k: got[k] for k in want} == want, source
    assert manifest["stats"]["short_dropped"] == 0 and manifest["config"]["max_tokens"] == 24


def test_quarantine_has_malformed_lines_with_reasons(first_run):
    base, _, manifest, expected, _ = first_run
    files = sorted((base / "out" / "quarantine").glob("*.jsonl"))
    assert [f"quarantine/{f.name}" for f in files] == [q["file"] for q in manifest["quarantine"]]
    recs = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert {(Path(r["file"]).name, r["line"], r["reason"].split(":")[0]) for r in recs} == expected["quarantine"]
    raw_lines = {(Path(r["file"]).name, r["line"]): r["raw"] for r in recs}
    zh_lines = (base / "raw" / "zh.jsonl").read_text(encoding="utf-8").splitlines()
    assert raw_lines[("zh.jsonl", 4)] == zh_lines[3]


def test_shards_decode_to_the_documents(first_run, corpus_tokenizer):
    base, cfg, manifest, expected, files = first_run
    tok = load_tokenizer(str(corpus_tokenizer))
    assert list(files) == [f"part-{i:05d}.arrow" for i in range(len(manifest["shards"]))]
    for entry in manifest["shards"]:
        assert hashlib.sha256(files[Path(entry["file"]).name]).hexdigest() == entry["sha256"]
    table = read_shards(base / "out")
    assert [s["rows"] for s in manifest["shards"]][:-1] == [4] * (len(manifest["shards"]) - 1)
    by_doc: dict[str, list[list[int]]] = {}
    for row in table.to_pylist():
        assert 0 < len(row["input_ids"]) <= cfg.max_tokens
        assert row["source"] == row["doc_id"].split("/")[0]
        by_doc.setdefault(row["doc_id"], []).append(row["input_ids"])
    assert list(by_doc) == sorted(expected["docs"], key=input_order(cfg.inputs))  # duplicates gone
    for doc_id, samples in by_doc.items():
        flat = [t for s in samples for t in s]
        assert [s[0] == tok.bos_token_id for s in samples] == [True] + [False] * (len(samples) - 1)
        assert [s[-1] == tok.eos_token_id for s in samples] == [False] * (len(samples) - 1) + [True]
        assert tok.decode(flat, skip_special_tokens=True) == expected["docs"][doc_id], doc_id


def test_second_run_is_byte_identical(first_run):
    from knowlm_ray.corpus.pipeline import run

    base, cfg, manifest, _, files = first_run
    quarantine = (base / "out" / "quarantine" / "part-00000.jsonl").read_bytes()
    again = run(cfg.model_copy(update={"num_partitions": 3}))  # another shuffle layout, same bytes
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in manifest.items() if k != "config"}
    assert {p.name: p.read_bytes() for p in sorted((base / "out" / "shards").iterdir())} == files
    assert (base / "out" / "quarantine" / "part-00000.jsonl").read_bytes() == quarantine
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_files_cut_into_byte_ranges_give_the_same_bytes(first_run, monkeypatch):
    """Read tasks of 40 bytes: every jsonl and text file is cut into many ranges (cuts inside
    lines, next to malformed ones), tasks mix ranges and whole files; outputs stay byte-identical."""
    import knowlm_ray.corpus.sources as sources
    from knowlm_ray.corpus.pipeline import run

    base, cfg, manifest, _, files = first_run
    monkeypatch.setattr(sources, "CHUNK_BYTES", 40)
    pieces = [p for task in sources.plan_reads(cfg.inputs, sources.list_input_files(cfg.inputs)) for p in task]
    assert sum(p["end"] is not None for p in pieces) > 20 and any(p["end"] is None for p in pieces)
    quarantine = (base / "out" / "quarantine" / "part-00000.jsonl").read_bytes()
    again = run(cfg)
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in manifest.items() if k != "config"}
    assert {p.name: p.read_bytes() for p in sorted((base / "out" / "shards").iterdir())} == files
    assert (base / "out" / "quarantine" / "part-00000.jsonl").read_bytes() == quarantine


def test_an_empty_block_without_columns_splits_into_nothing():
    """A read range that holds no line start gives a block with no rows and, in Ray Data, no
    columns; every plain task over blocks takes it."""
    import pyarrow as pa

    from knowlm_ray.corpus.dedup import BUCKET_SCHEMA, _block_signatures, bucket_rows_batch
    from knowlm_ray.corpus.pipeline import _split_block

    assert _split_block(pa.table({}), 24, 0.25)[3:] == ([0, 0, 0], [])
    assert bucket_rows_batch(pa.table({}), True, 12, 10).schema == BUCKET_SCHEMA
    assert _block_signatures(pa.table({}), pa.array(["x"])).num_rows == 0


def test_sample_corpus_counts_near_dups_and_greedy_pack(first_run, corpus_tokenizer):
    """data/sample through tiny_corpus.yaml (near dedup on) with greedy packing, written over the
    first run's out_dir: the counts of data/sample/README.md, exactly."""
    from knowlm_ray.corpus.pipeline import run

    base, cfg, first, _, _ = first_run
    sample_cfg = tiny_corpus_config(
        tokenizer=str(corpus_tokenizer),
        out_dir=str(base / "out"),
        max_tokens=128,
        **{"pack.mode": "greedy", "rows_per_shard": 400},
    )
    manifest = run(sample_cfg)
    assert manifest["stages"] | {"samples": 0, "tokens": 0} == {
        "read": 224,
        "malformed": 9,
        "filtered": 13,
        "exact_dups": 9,
        "near_dups": 8,
        "capped": 0,
        "documents": 185,
        "samples": 0,
        "tokens": 0,
    }
    bs = manifest["by_source"]
    assert [bs["baike"][k] for k in ("malformed", "filtered", "exact_dups", "near_dups", "documents")] == [
        5,
        6,
        4,
        4,
        97,
    ]
    assert [bs["wiki"][k] for k in ("malformed", "filtered", "exact_dups", "near_dups", "documents")] == [
        4,
        6,
        3,
        4,
        41,
    ]
    assert [bs["books"][k] for k in ("exact_dups", "near_dups", "documents")] == [2, 0, 38]
    assert [bs["code"][k] for k in ("filtered", "documents")] == [1, 9] and bs["code"]["filters"]["code"] == 1
    assert manifest["filters"] == {
        "length": 6,
        "char_ratio": 4,
        "language": 0,
        "repetition": 2,
        "code": 1,
        "blocklist": 0,
        "pii": 0,
    }
    near = manifest["near_dedup"]
    assert near | {"bucket_pairs": 0, "candidate_pairs": 0} == {
        "bands": 18,
        "rows": 7,
        "bucket_pairs": 0,
        "candidate_pairs": 0,
        "edges": 8,
        "clusters": 8,
        "near_dups": 8,
    }
    assert near["bucket_pairs"] >= near["candidate_pairs"] >= near["edges"]
    assert [b["file"] for b in manifest["blocklists"]] == ["builtin:zh", "builtin:en"]
    quarantined = [
        ln for f in (base / "out" / "quarantine").glob("*.jsonl") for ln in f.read_text(encoding="utf-8").splitlines()
    ]
    assert len(quarantined) == 9
    # dropped/: the audit trail, one line per filtered / duplicate document with the reason
    dropped = [
        json.loads(ln)
        for f in sorted((base / "out" / "dropped").glob("*.jsonl"))
        for ln in f.read_text(encoding="utf-8").splitlines()
    ]
    assert [f"dropped/{p.name}" for p in sorted((base / "out" / "dropped").glob("*.jsonl"))] == [
        d["file"] for d in manifest["dropped"]
    ]
    ids = [d["doc_id"] for d in dropped]
    assert len(dropped) == 13 + 9 + 8 and ids == sorted(ids, key=input_order(manifest["config"]["inputs"]))
    near = {d["doc_id"]: d["reason"] for d in dropped if d["status"] == "near_dup"}
    assert near == {k: f"near duplicate of {v}" for k, v in SAMPLE_NEAR_DUPS.items()}
    assert {d["reason"].split(":")[0] for d in dropped if d["status"] == "filtered"} == {
        "length",
        "char_ratio",
        "repetition",
        "code",
    }
    # greedy packing: rows of exactly max_tokens but for each source's last row in a shard, and
    # every document start (BOS) recorded in doc_starts
    assert manifest["format"]["columns"]["doc_starts"] == "list<int32>"
    assert sorted(p.name for p in (base / "out" / "shards").iterdir()) == [
        Path(s["file"]).name for s in manifest["shards"]
    ]  # the first run's parts are gone
    tok = load_tokenizer(str(corpus_tokenizer))
    table = read_shards(base / "out")
    assert table.column_names == ["input_ids", "doc_id", "source", "doc_starts"]
    assert manifest["stats"]["rows"] == table.num_rows < manifest["stages"]["samples"]
    rows = table.to_pylist()
    for shard in shard_files(base / "out"):  # packing runs per shard
        mine = pa.ipc.open_file(str(shard)).read_all().to_pylist()
        for i, row in enumerate(mine):
            last_of_run = i + 1 == len(mine) or mine[i + 1]["source"] != row["source"]
            assert len(row["input_ids"]) == 128 or last_of_run
            bos = [j for j, t in enumerate(row["input_ids"]) if t == tok.bos_token_id]
            assert row["doc_starts"][0] == 0 and set(row["doc_starts"][1:]) == set(bos) - {0}
    assert sum(len(r["doc_starts"]) - (r["input_ids"][0] != tok.bos_token_id) for r in rows) == 185
    assert not set(table["doc_id"].to_pylist()) & set(SAMPLE_NEAR_DUPS)


@pytest.mark.parametrize("kind", ["missing", "empty", "bad json", "bad tokenizer.json", "loads nowhere"])
def test_a_bad_tokenizer_is_one_clear_error_and_leaves_nothing(ray_local, tmp_path, kind):
    """The driver checks the tokenizer's files before any Ray work; one whose files look right
    but that transformers cannot load fails the first tokenising task: the same one-line error."""
    from knowlm_ray.corpus.pipeline import run

    write_corpus(tmp_path / "raw")
    tok = tmp_path / "tok"
    if kind != "missing":
        tok.mkdir()
    if kind == "bad json":
        (tok / "tokenizer_config.json").write_text("{not json")
    if kind == "bad tokenizer.json":
        (tok / "tokenizer.json").write_text("{}")
    if kind == "loads nowhere":  # valid JSON, a tokenizer.model that is no SentencePiece model
        (tok / "tokenizer_config.json").write_text("{}")
        (tok / "tokenizer.model").write_text("garbage")
    problem = "no such directory" if kind == "missing" else "cannot be loaded"
    with pytest.raises(ConfigError, match=f"^tokenizer '{tok}': {problem}") as err:
        run(make_cfg(tmp_path / "raw", tok, tmp_path / "out"))
    assert "\n" not in str(err.value)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["raw"] if kind == "missing" else ["raw", "tok"])  # no out_dir, no staging


def test_refuses_to_replace_a_foreign_directory(ray_local, corpus_tokenizer, tmp_path):
    from knowlm_ray.corpus.pipeline import run

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep")
    write_corpus(tmp_path / "raw")
    with pytest.raises(ConfigError, match="not a prepare_corpus output"):
        run(make_cfg(tmp_path / "raw", corpus_tokenizer, tmp_path / "out"))
    assert (tmp_path / "out" / "precious.txt").exists()


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_corpus_byte_for_byte(first_run, tmp_path, monkeypatch, capsys):
    """ENOSPC during a re-run: one line, the previous out_dir untouched, no staging left.

    No unprivileged way to fill a disk here (no tmpfs, no loop device): the driver's fsync of the
    new shards before the swap raises ENOSPC, as the kernel does when delayed allocation finds no
    room. Only this test patches the write layer."""
    import os
    import shutil

    from knowlm_ray.atomic import DiskFullError
    from knowlm_ray.corpus.pipeline import run
    from knowlm_ray.errors import user_errors

    base, cfg, _, _, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as err:
        run(cfg.model_copy(update={"out_dir": str(out)}))
    msg = str(err.value)
    assert msg.startswith(f"no space left on device writing {out}/") and msg.endswith(f"; the previous {out} is intact")
    with pytest.raises(SystemExit) as code, user_errors():  # what the job's console shows: one line, exit 2
        raise err.value
    assert code.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"error: {msg}"
    monkeypatch.undo()
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
