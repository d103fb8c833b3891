"""Plain-Python cores of the corpus stages: readers, filters, dedup, shard planning and I/O, counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from knowlm_ray.config import FilterConfig, SourceConfig
from knowlm_ray.corpus.dedup import EXACT, bucket_pairs, bucket_rows, mark_duplicates, resolve
from knowlm_ray.corpus.filters import FILTER_NAMES, annotate_batch, dedup_key, filter_reason, symbol_ratio
from knowlm_ray.corpus.schema import DOC_SCHEMA, EXACT_DUP, FILTERED, MALFORMED, OK, SAMPLE_SCHEMA, SHARD_SCHEMA
from knowlm_ray.corpus.shards import iter_samples, plan_files, read_shards, write_arrow_file
from knowlm_ray.corpus.sources import list_input_files, read_file_rows
from knowlm_ray.corpus.stats import partial_counts, summarise


def _rows(tmp_path, name, content, **src):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = SourceConfig(path=str(p), **src)
    (entry,) = list_input_files([cfg])
    return list(read_file_rows(entry, cfg))


def test_jsonl_fields_joined_and_malformed_lines_kept_with_reasons(tmp_path):
    lines = [
        json.dumps({"title": "标题", "content": "正文。"}, ensure_ascii=False),
        "",  # blank: not a document
        '{"title": "x", "content": ',
        json.dumps({"title": "x"}),
        json.dumps({"title": "x", "content": 5}),
        "[1, 2]",
    ]
    content = ("\n".join(lines) + "\n").encode() + b'{"title": "\xff", "content": "y"}\n'
    rows = _rows(tmp_path, "zh.jsonl", content, source="baike", lang="zh", text_field=["title", "content"])
    assert [(r["doc_id"], r["status"]) for r in rows] == [
        ("baike/zh.jsonl:000000001", OK),
        ("baike/zh.jsonl:000000003", MALFORMED),
        ("baike/zh.jsonl:000000004", MALFORMED),
        ("baike/zh.jsonl:000000005", MALFORMED),
        ("baike/zh.jsonl:000000006", MALFORMED),
        ("baike/zh.jsonl:000000007", MALFORMED),
    ]
    assert rows[0]["text"] == "标题\n正文。"
    reasons = [r["reason"] for r in rows[1:]]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1:] == [
        "missing field 'content'",
        "field 'content' is int, not a string",
        "not a JSON object (got list)",
        "not valid UTF-8 (byte 11)",
    ]
    assert rows[1]["raw"] == lines[2] and rows[1]["file"].endswith("zh.jsonl")


def test_text_and_files_formats(tmp_path):
    rows = _rows(tmp_path, "b.txt", "first line\r\n\n  second  \n", source="books", lang="en", format="text")
    assert [(r["doc_id"], r["text"]) for r in rows] == [
        ("books/b.txt:000000001", "first line"),
        ("books/b.txt:000000003", "second"),
    ]
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "b.py").write_text("print(2)\n")
    (code / "a.py").write_text("print(1)\n")
    (code / "notes.md").write_text("skip me")
    src = SourceConfig(path=str(code), source="code", lang="code", format="files", glob="**/*.py")
    entries = list_input_files([src])
    assert [e["rel"] for e in entries] == ["a.py", "pkg/b.py"]
    assert [r["doc_id"] for e in entries for r in read_file_rows(e, src)] == ["code/a.py", "code/pkg/b.py"]


def test_bad_paths_fail_early_with_the_input_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input 0 \(source 'x'\): path not found"):
        list_input_files([SourceConfig(path=str(tmp_path / "nope.jsonl"), source="x", lang="en")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_input_files([SourceConfig(path=str(tmp_path), source="x", lang="code", format="files", glob="*.py")])


def test_filters_flat_keys_still_accepted():
    cfg = FilterConfig.model_validate(
        {"length": {"min_chars": 10, "max_chars": 100}, "char_ratio": {"max_symbol_ratio": 0.3}}
    )
    assert (cfg.length.min_chars, cfg.length.max_chars, cfg.char_ratio.max_symbol_ratio) == (10, 100, 0.3)
    assert filter_reason("", cfg) == "length: empty"
    assert filter_reason("short", cfg).startswith("length: too short")
    assert filter_reason("x" * 101, cfg).startswith("length: too long")
    assert filter_reason("@@@@ #### $$$$ %%%% &&&&", cfg).startswith("char_ratio: symbol ratio")
    assert filter_reason("知识图谱是一种结构化的语义知识库，用于描述概念。", cfg, "zh") is None
    code = "def f(x):\n    return {'a': [x, x + 1], 'b': x * 2}  # note\n"
    assert (
        symbol_ratio(code) < 0.3
        and filter_reason(code, FilterConfig.model_validate({"length": {"min_chars": 10}}), "code") is None
    )


def test_dedup_key_normalises_width_and_whitespace():
    assert dedup_key("ＡＢＣ  知识\n图谱") == dedup_key("ABC 知识 图谱")
    assert dedup_key("abc") != dedup_key("abd")


def _doc(doc_id, text, status=OK):
    return {
        "doc_id": doc_id,
        "source": "s",
        "lang": "en",
        "file": "f",
        "line": 1,
        "text": text,
        "status": status,
        "reason": None,
        "raw": None,
        "key": None,
    }


def test_annotate_then_exact_dedup_keeps_the_first():
    batch = pa.Table.from_pylist(
        [
            _doc("s/f:3", "the same text, long enough"),
            _doc("s/f:1", "the  same text, long enough"),
            _doc("s/f:2", "tiny"),
            _doc("s/f:4", "", MALFORMED),
        ],
        schema=DOC_SCHEMA,
    )
    rows = annotate_batch(batch, FilterConfig.model_validate({"length": {"min_chars": 10}}).model_dump()).to_pylist()
    assert [r["status"] for r in rows] == [OK, OK, FILTERED, MALFORMED]
    assert rows[0]["key"] == rows[1]["key"] and rows[2]["key"] == "~s/f:2" and rows[2]["text"] == ""
    table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
    ok = [r for r in rows if r["status"] == OK]
    buckets = bucket_rows([r["doc_id"] for r in ok], [r["key"] for r in ok], None, 12, 10)
    pairs = [(r["a"], r["b"], r["kind"]) for r in bucket_pairs(buckets, 64).to_pylist() if r["a"]]
    assert pairs == [("s/f:1", "s/f:3", EXACT)]
    exact, _, _ = resolve(pairs, dict, 0.8)
    marked = sorted(
        mark_duplicates(table, {d: (EXACT_DUP, rep) for d, rep in exact.items()}).to_pylist()[:2],
        key=lambda r: r["doc_id"],
    )
    assert [(r["doc_id"], r["status"]) for r in marked] == [("s/f:1", OK), ("s/f:3", EXACT_DUP)]
    assert marked[1]["reason"] == "duplicate of s/f:1"


def test_plan_files_cuts_fixed_size_files():
    assert plan_files([3, 0, 4, 2], 4) == [[(0, 0, 3), (2, 0, 1)], [(2, 1, 4), (3, 0, 1)], [(3, 1, 2)]]
    assert plan_files([3, 4, 2], 4, start=2, stop=8) == [[(0, 2, 3), (1, 0, 3)], [(1, 3, 4), (2, 0, 1)]]
    assert plan_files([5], 10, start=5, stop=5) == []


@pytest.mark.parametrize("kind", ["arrow", "jsonl"])
def test_file_writer_writes_each_file_once_its_rows_are_in(tmp_path, ray_local, kind):
    """Blocks fed one by one (with empty ones): a file is started as soon as its rows are in, a
    block is let go once all its rows are in started files; the files hold exactly the rows in
    order, whatever the blocks, and the same bytes as one block would give."""
    import ray

    from knowlm_ray.corpus.shards import FileWriter

    rows = [{"input_ids": list(range(i % 7)), "doc_id": f"d{i:03d}", "source": "s"} for i in range(23)]
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    cols = ["doc_id", "source"] if kind == "jsonl" else None

    def write(sizes, out):
        writer = FileWriter(out, kind=kind, rows_per_file=5, columns=cols)
        started, held, at = [], [], 0
        for n in sizes:
            writer.add(ray.put(table.slice(at, n)), n)
            at += n
            started.append(len(writer.pending))
            held.append(sum(r is not None for r in writer.refs))
        return writer.finish(), started, held

    infos, started, held = write([3, 0, 4, 6, 2, 1, 7], tmp_path / "a")
    assert started == [0, 0, 1, 2, 3, 3, 4] and [i["rows"] for i in infos] == [5, 5, 5, 5, 3]
    assert held == [1, 2, 1, 1, 0, 1, 1]  # only blocks with rows not yet in a started file
    one, _, _ = write([23], tmp_path / "b")
    assert [i["sha256"] for i in infos] == [i["sha256"] for i in one]
    if kind == "arrow":
        assert [r["doc_id"] for r in read_shards(tmp_path / "a").to_pylist()] == [r["doc_id"] for r in rows]
    none, _, _ = write([0, 0], tmp_path / "c")
    assert none == [] and not (tmp_path / "c").exists()


def test_arrow_shards_roundtrip_and_bytes_do_not_depend_on_chunking(tmp_path):
    rows = [{"input_ids": list(range(i, i + 3)), "doc_id": f"d{i}", "source": "s"} for i in range(5)]
    whole = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    chunked = pa.concat_tables([whole.slice(0, 2), whole.slice(2)])
    (tmp_path / "shards").mkdir()
    a = write_arrow_file(whole, tmp_path / "shards" / "part-00000.arrow")
    b = write_arrow_file(chunked, tmp_path / "part-x.arrow")
    assert a["sha256"] == b["sha256"] and a["rows"] == 5 and a["tokens"] == 15
    # nor on where the rows were sliced from (list offsets / buffers of a bigger block)
    bigger = pa.Table.from_pylist(rows[:1] * 3 + rows, schema=SHARD_SCHEMA).slice(3)
    assert write_arrow_file(bigger, tmp_path / "part-y.arrow")["sha256"] == a["sha256"]
    table = read_shards(tmp_path)
    assert table.schema == SHARD_SCHEMA and table.to_pylist() == rows
    got = [(list(s["input_ids"]), s["doc_id"]) for s in iter_samples(tmp_path)]
    assert got == [(r["input_ids"], r["doc_id"]) for r in rows]


def test_summarise_counts_documents_once():
    rows = [
        dict(
            doc_id="a:1",
            source="a",
            file="f",
            line=1,
            sample=-1,
            input_ids=[],
            n_tokens=0,
            status=MALFORMED,
            reason="bad",
            raw="{",
            sentences_cut=0,
            tail=False,
        ),
        dict(
            doc_id="a:2",
            source="a",
            file="f",
            line=2,
            sample=0,
            input_ids=[1, 5],
            n_tokens=2,
            status=OK,
            reason=None,
            raw=None,
            sentences_cut=1,
            tail=False,
        ),
        dict(
            doc_id="a:2",
            source="a",
            file="f",
            line=2,
            sample=1,
            input_ids=[],
            n_tokens=1,
            status="short",
            reason="x",
            raw=None,
            sentences_cut=0,
            tail=True,
        ),
        dict(
            doc_id="a:3",
            source="a",
            file="f",
            line=3,
            sample=-1,
            input_ids=[],
            n_tokens=0,
            status=EXACT_DUP,
            reason="dup",
            raw=None,
            sentences_cut=0,
            tail=False,
        ),
    ]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    stages, by_source, stats = summarise(partial_counts(table).to_pylist())
    assert stages == {
        "read": 3,
        "malformed": 1,
        "filtered": 0,
        "exact_dups": 1,
        "near_dups": 0,
        "capped": 0,
        "documents": 1,
        "samples": 1,
        "tokens": 2,
    }
    assert by_source == {"a": {**stages, "filters": dict.fromkeys(FILTER_NAMES, 0)}}
    assert stats == {
        "sentences_cut": 1,
        "short_dropped": 1,
        "short_dropped_tokens": 1,
        "tail_samples": 0,
        "tail_tokens": 0,
        "short_tail_samples": 0,
        "backfill_tokens": 0,
        "capped_samples": 0,
        "filters": dict.fromkeys(FILTER_NAMES, 0),
    }


def test_summarise_counts_filters_and_tails():
    base = dict(source="a", file="f", input_ids=[], raw=None, sentences_cut=0, tail=False)
    rows = [
        dict(base, doc_id="a:1", line=1, sample=-1, n_tokens=0, status=FILTERED, reason="length: empty"),
        dict(
            base, doc_id="a:2", line=2, sample=-1, n_tokens=0, status=FILTERED, reason="repetition: dup_line_frac 0.9"
        ),
        dict(base, doc_id="a:3", line=3, sample=-1, n_tokens=0, status=FILTERED, reason="length: too short (3 < 20)"),
        dict(base, doc_id="a:4", line=4, sample=0, n_tokens=16, status=OK, reason=None, input_ids=[1] * 16),
        dict(base, doc_id="a:4", line=4, sample=1, n_tokens=3, status=OK, reason=None, input_ids=[1] * 3, tail=True),
        dict(base, doc_id="a:5", line=5, sample=0, n_tokens=16, status=OK, reason=None, input_ids=[1] * 16),
        dict(base, doc_id="a:5", line=5, sample=1, n_tokens=9, status=OK, reason=None, input_ids=[1] * 9, tail=True),
    ]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    stages, by_source, stats = summarise(partial_counts(table, max_tokens=16).to_pylist())
    assert stages["filtered"] == 3 and stages["documents"] == 2 and stages["samples"] == 4
    assert stats["filters"] == {**dict.fromkeys(FILTER_NAMES, 0), "length": 2, "repetition": 1}
    assert by_source["a"]["filters"] == stats["filters"]
    assert (stats["tail_samples"], stats["tail_tokens"], stats["short_tail_samples"]) == (2, 12, 1)
