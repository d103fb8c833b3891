"""Readers (parquet, gzip, zstd) and per-source converters (plain Python, no Ray)."""

from __future__ import annotations

import gzip
import json
from itertools import accumulate

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from knowlm_ray.config import SourceConfig
from knowlm_ray.corpus.schema import MALFORMED, OK
from knowlm_ray.corpus.sources import list_input_files, read_file_rows
from knowlm_ray.corpus.text import convert, fold_fullwidth, normalise_whitespace, strip_wiki_markup


def _rows(path, **src):
    cfg = SourceConfig(path=str(path), **src)
    return [r for e in list_input_files([cfg]) for r in read_file_rows(e, cfg)]


LINES = [json.dumps({"text": f"Document number {i} has some text."}) for i in range(1, 4)]


@pytest.mark.parametrize(
    "suffix,compress",
    [
        (".jsonl.gz", gzip.compress),
        (".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        (
            ".jsonl.zstd",
            lambda b: zstandard.ZstdCompressor().compress(b[:40]) + zstandard.ZstdCompressor().compress(b[40:]),
        ),
    ],
)
def test_compressed_jsonl(tmp_path, suffix, compress):
    p = tmp_path / f"d{suffix}"
    p.write_bytes(compress(("\n".join(LINES) + "\n").encode()))
    rows = _rows(p, source="s", lang="en")
    assert [(r["doc_id"], r["status"], r["text"]) for r in rows] == [
        (f"s/d{suffix}:{i:09d}", OK, f"Document number {i} has some text.") for i in range(1, 4)
    ]


@pytest.mark.parametrize(
    "suffix,compress", [(".txt.gz", gzip.compress), (".txt.zst", lambda b: zstandard.ZstdCompressor().compress(b))]
)
def test_truncated_stream_keeps_what_was_read_and_quarantines_the_rest(tmp_path, suffix, compress):
    body = "".join(f"line {i} " + "x" * (i % 50) + f" {i * 7919 % 1000}\n" for i in range(20000)).encode()
    blob = compress(body)
    p = tmp_path / f"t{suffix}"
    p.write_bytes(blob[: len(blob) // 2])
    rows = _rows(p, source="s", lang="en", format="text")
    assert all(r["status"] == OK for r in rows[:-1]) and len(rows) > 100
    assert rows[-1]["status"] == MALFORMED and rows[-1]["reason"].startswith(f"unreadable from line {len(rows)}")


def test_compressed_code_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py.gz").write_bytes(gzip.compress(b"def f():  \r\n    return 1\r\n"))
    (tmp_path / "b.py.zst").write_bytes(zstandard.ZstdCompressor().compress(b"print(2)\n"))
    rows = _rows(tmp_path, source="code", lang="code", format="files", glob="**/*.py*")
    assert [(r["doc_id"], r["text"]) for r in rows] == [
        ("code/b.py.zst", "print(2)"),
        ("code/pkg/a.py.gz", "def f():\n    return 1"),
    ]


def test_parquet_rows_fields_and_malformed(tmp_path):
    table = pa.table({"title": ["A", "B", None, "D"], "content": ["first body", "", "third", None], "n": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    rows = _rows(tmp_path / "d.parquet", source="pq", lang="en", format="parquet", text_field=["title", "content"])
    assert [(r["doc_id"], r["status"]) for r in rows] == [
        ("pq/d.parquet:000000001", OK),
        ("pq/d.parquet:000000002", OK),
        ("pq/d.parquet:000000003", MALFORMED),
        ("pq/d.parquet:000000004", MALFORMED),
    ]
    assert rows[0]["text"] == "A\nfirst body" and rows[1]["text"] == "B"
    assert (
        rows[2]["reason"] == "field 'title' is null, not a string" and json.loads(rows[2]["raw"])["content"] == "third"
    )
    missing = _rows(tmp_path / "d.parquet", source="pq", lang="en", format="parquet", text_field="body")
    assert {r["reason"] for r in missing} == {"missing field 'body'"} and len(missing) == 4
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (bad,) = _rows(tmp_path / "bad.parquet", source="pq", lang="en", format="parquet")
    assert bad["status"] == MALFORMED and bad["reason"].startswith("unreadable parquet file")


def test_wiki_and_baike_markup_stripped():
    raw = (
        "'''Karsholm''' is a city.[1] It lies on the [[Kars River|river Kars]].[citation needed]\n"
        "== History ==\n{{Infobox settlement|name={{lang|en|K}}|pop=1}}[[File:Harbour.jpg|thumb|The [[harbour]]]]"
        "Founded in 1201.<ref>Smith 2001, p. 4</ref> See [http://example.com the site].&nbsp;It grew.<br/>"
        '<div class="x">Text</div><!-- hidden -->[edit][[Category:Cities]]'
    )
    assert convert(raw, "wiki", "en") == (
        "Karsholm is a city. It lies on the river Kars.\nHistory\nFounded in 1201. See the site. It grew.\nText"
    )
    zh = "'''林慕白'''（1931年—2014年）[编辑]，物理学家。[2]&nbsp;&nbsp;他在{{模板|x}}江南大学任教[3]。"
    assert convert(zh, "baike", "zh") == "林慕白（1931年—2014年），物理学家。 他在江南大学任教。"
    assert strip_wiki_markup("a < b and c > d, x<y") == "a < b and c > d, x<y"  # not tags


def test_fullwidth_folding_and_whitespace():
    text = "ＡＴＰ和Ｃ４植物，ＧＢ１８０３０标准！（注）ｘ＝１"
    assert fold_fullwidth(text) == "ATP和C4植物，GB18030标准！（注）x＝1"  # punctuation untouched
    messy = "\ufeff  第一段\u3000\u3000有全角空格\t和制表符  \r\n\r\n\r\n\r\n第二段\u200b。 \n  "
    assert normalise_whitespace(messy) == "第一段 有全角空格 和制表符\n\n第二段。"
    assert convert("　　ＡＢＣ  is   here.\x07", "plain", "en") == "ABC is here."
    assert convert("  x\r\n", "none", "en") == "x"
    code = "def f():\t\r\n    return  1   \n\n\n"
    assert convert(code, "auto", "code") == "def f():\n    return  1"  # indentation and inner spaces kept
    with pytest.raises(ValueError, match="unknown converter"):
        convert("x", "bogus", "en")


def test_sample_markup_remnants_gone(sample_rows):
    """data/sample/README.md lists [1] [2] [3] [编辑] [edit] [citation needed] ''' &nbsp; and
    full-width ASCII in good documents: none survives the tiny_corpus.yaml converters."""
    texts = {r["doc_id"]: r["text"] for r in sample_rows if r["status"] == OK}
    for marker in ("[1]", "[2]", "[3]", "[编辑]", "[edit]", "[citation needed]", "'''", "&nbsp;", "\u3000", "ＡＴＰ"):
        assert not [d for d, t in texts.items() if marker in t and not d.startswith("code/")], marker
    assert "ATP" in "".join(texts.values())
    assert all(t == t.strip() for t in texts.values())


AWKWARD = (
    b'{"text": "first"}\r\n\r\n{"text": "second, CRLF"}\r\n{not json}\n\n\n'
    + b'{"text": "'
    + "长".encode() * 300
    + b'"}\n'  # a line longer than most ranges
    + b'\xff\xfe bad utf-8\n{"text": "last, no newline"}'
)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk", [1, 2, 7, 16, 64, 333, 10_000])
def test_byte_ranges_give_the_rows_of_the_whole_file(tmp_path, chunk, workers):
    """A file cut into byte ranges (a range owns the lines that start in it) reads exactly as the
    whole file does: same rows, same line numbers, none lost or doubled at a cut."""
    from knowlm_ray.corpus.sources import plan_reads, read_task_sizes

    path = tmp_path / "d.jsonl"
    path.write_bytes(AWKWARD)
    cfg = SourceConfig(path=str(path), source="s", lang="zh")
    files = list_input_files([cfg])
    whole = [r for e in files for r in read_file_rows(e, cfg)]
    assert [r["line"] for r in whole] == [1, 3, 4, 7, 8, 9]
    tasks = plan_reads([cfg], files, chunk_bytes=chunk, workers=workers)
    pieces = [p for task in tasks for p in task]
    ends = list(accumulate(read_task_sizes(len(AWKWARD), chunk, workers)))
    if len(ends) > 1:  # cut at the task boundaries: one range per task, tiling the file
        assert [(p["start"], p["end"]) for p in pieces] == list(zip([0, *ends], ends))
    else:
        assert [(p["start"], p["end"]) for p in pieces] == [(0, None)]
    assert [r for p in pieces for r in read_file_rows(p, cfg)] == whole


@pytest.mark.parametrize(
    "total,chunk,workers", [(0, 8, 2), (5, 8, 2), (100, 8, 1), (100, 8, 2), (1000, 64, 3), (10, 1, 4), (33, 3, 2)]
)
def test_read_task_sizes_end_with_smaller_tasks(total, chunk, workers):
    """Every byte in exactly one task; ``chunk`` each, except the last ``workers`` (a quarter) and
    the ``workers`` before them (half), and the first, which takes what is left."""
    from knowlm_ray.corpus.sources import read_task_sizes

    sizes = read_task_sizes(total, chunk, workers)
    assert sum(sizes) == total and all(s > 0 for s in sizes)
    full = [max(1, chunk // 4)] * workers + [max(1, chunk // 2)] * workers + [chunk] * len(sizes)
    assert sizes[::-1][:-1] == full[: max(0, len(sizes) - 1)]
    assert not sizes or 0 < sizes[0] <= full[len(sizes) - 1]


@pytest.mark.parametrize("on", ["driver", "tasks"])
def test_plan_reads_groups_small_files_and_keeps_input_order(tmp_path, ray_local, monkeypatch, on):
    """Files laid end to end, cut at the task boundaries: small files share a task, a big text
    file is cut into ranges, a compressed one stays whole; its line numbers (counted on the
    driver or, for big inputs, in Ray tasks) are right either way."""
    import knowlm_ray.corpus.sources as sources

    if on == "tasks":
        monkeypatch.setattr(sources, "DRIVER_COUNT_BYTES", 0)
    tree = tmp_path / "code"
    tree.mkdir()
    for i in range(6):
        (tree / f"m{i}.py").write_text("x = 1\n" * 50)  # 300 bytes each
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i}\n" for i in range(1000)))  # 8,890 bytes
    gz = tmp_path / "big.txt.gz"
    gz.write_bytes(gzip.compress(big.read_bytes()))
    inputs = [
        SourceConfig(path=str(tree), source="code", lang="code", format="files", glob="*.py"),
        SourceConfig(path=str(big), source="t", lang="en", format="text"),
        SourceConfig(path=str(gz), source="g", lang="en", format="text"),
    ]
    files = list_input_files(inputs)
    total = sum(f["size"] for f in files)
    tasks = sources.plan_reads(inputs, files, chunk_bytes=1000, workers=2)
    ends = list(accumulate(sources.read_task_sizes(total, 1000, 2)))
    # each small file in the task its first byte falls in, several to a task
    starts = list(accumulate([0] + [300] * 5))
    where = [next(k for k, e in enumerate(ends) if s < e) for s in starts]
    assert [[p["rel"] for p in t if p["rel"].endswith(".py")] for t in tasks[: where[-1] + 1]] == [
        [f"m{i}.py" for i, w in enumerate(where) if w == k] for k in range(where[-1] + 1)
    ]
    assert len(set(where)) < 6
    ranges = [p for t in tasks for p in t if p["rel"] == "big.txt"]
    assert [1800 + p["end"] for p in ranges[:-1]] == [e for e in ends if 1800 < e < 1800 + 8890]
    assert ranges[0]["start"] == 0 and ranges[-1]["end"] == big.stat().st_size
    assert all(a["end"] == b["start"] for a, b in zip(ranges, ranges[1:]))
    assert [p for t in tasks for p in t if p["rel"] == "big.txt.gz"][0]["end"] is None  # a stream: whole
    assert tasks[-1][-1]["rel"] == "big.txt.gz" and all(tasks)  # the tasks it covers are left out
    assert len(tasks) < len(ends)
    rows = [r for t in tasks for p in t for r in read_file_rows(p, inputs[p["input"]])]
    assert [r["text"] for r in rows if r["source"] == "t"] == [f"line {i}" for i in range(1000)]
    assert [r["line"] for r in rows if r["source"] == "t"] == list(range(1, 1001))
    assert rows == [r for e in files for r in read_file_rows(e, inputs[e["input"]])]  # input order


def hostile_lines(good: list[str]) -> tuple[bytes, int]:
    """``good`` JSON lines with a hostile one planted after each: invalid UTF-8, JSON nested 5,000
    and 100,000 deep (RecursionError in the parser), a number for the text, a list for the record,
    an unpaired surrogate escape. Returns the file's bytes and the number of bad lines."""
    bad = [
        b'{"text": "caf\xe9 au lait"}',  # latin-1, not UTF-8
        b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"text": 12345}',
        b'[{"text": "a record inside a list"}]',
        b'{"text": "half a pair \\ud800 here"}',
        b"\xff\xfe\x00garbage",
    ]
    lines: list[bytes] = []
    for i, g in enumerate(good):
        lines.append(g.encode("utf-8"))
        if i < len(bad):
            lines.append(bad[i])
    lines += bad[len(good) :]
    return b"\n".join(lines) + b"\n", len(bad)


def test_hostile_lines_are_quarantined_and_counted(tmp_path):
    good = [json.dumps({"text": f"Good document {i}, with ünïcode ✓."}, ensure_ascii=False) for i in range(9)]
    data, n_bad = hostile_lines(good)
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(data)
    src = SourceConfig(path=str(p), source="web", lang="en")
    entry = list_input_files([src])[0]
    rows = list(read_file_rows(entry, src))
    ok = [r for r in rows if r["status"] == OK]
    bad = [r for r in rows if r["status"] == MALFORMED]
    assert len(ok) + len(bad) == len(good) + n_bad and len(bad) == n_bad
    assert [r["text"] for r in ok] == [json.loads(g)["text"] for g in good]  # every good line kept, in order
    reasons = [r["reason"] for r in bad]
    assert reasons[0].startswith("not valid UTF-8") and reasons[6].startswith("not valid UTF-8")
    assert reasons[1] == reasons[2] == "invalid JSON: nested too deeply"
    assert reasons[3] == "field 'text' is int, not a string"
    assert reasons[4] == "not a JSON object (got list)"
    assert "unpaired surrogate" in reasons[5]
    # what the pipeline does with them next: one Arrow block, quarantine rows and all
    from knowlm_ray.corpus.schema import DOC_SCHEMA

    table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
    assert table.num_rows == len(rows) and all(len(r["raw"]) <= 4096 for r in bad)
    # the same lines cut into byte ranges (a bad line across a cut included) give the same rows
    size = len(data)
    cuts = [0, size // 3, 2 * size // 3, size]
    pieces = []
    line0 = 0
    for a, b in zip(cuts, cuts[1:]):
        pieces += list(read_file_rows({**entry, "start": a, "end": b, "line0": line0}, src))
        line0 += data[a:b].count(b"\n")
    assert [(r["doc_id"], r["status"], r["reason"]) for r in pieces] == [
        (r["doc_id"], r["status"], r["reason"]) for r in rows
    ]
