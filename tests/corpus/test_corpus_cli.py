"""`knowlm corpus inspect` and `knowlm corpus export-megatron` on a corpus the pipeline prepared
(with a per-source mix cap and short tails dropped, so that run checks those too)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pytest

from knowlm_ray.cli import main as knowlm
from knowlm_ray.corpus.samples import load_tokenizer
from knowlm_ray.corpus.shards import ShardReader, read_shards, write_arrow_file

from .test_prepare_corpus import make_cfg, write_corpus


@pytest.fixture(scope="module")
def prepared(ray_local, corpus_tokenizer, tmp_path_factory):
    from knowlm_ray.corpus.pipeline import run

    base = tmp_path_factory.mktemp("cli")
    write_corpus(base / "raw")
    manifest = run(
        make_cfg(
            base / "raw",
            corpus_tokenizer,
            base / "out",
            mix={"caps": {"books": 2}},
            split={"tail": "drop", "short_tail": 0.5},
        )
    )
    return base / "out", manifest


def test_mix_cap_and_dropped_tails_are_counted(prepared):
    out, manifest = prepared
    st, books = manifest["stages"], manifest["by_source"]["books"]
    assert manifest["mix"]["sources"]["books"] | {"tokens_before": 0, "tokens_after": 0} == {
        "cap": 2,
        "documents_before": 3,
        "documents_after": 2,
        "tokens_before": 0,
        "tokens_after": 0,
    }
    assert books["capped"] == st["capped"] == 1 and books["documents"] == 2
    for s in [st, *manifest["by_source"].values()]:  # the manifest's arithmetic, with the cap
        assert s["read"] == sum(
            s[k] for k in ("malformed", "filtered", "exact_dups", "near_dups", "capped", "documents")
        )
    rows = read_shards(out).to_pylist()
    assert len({r["doc_id"] for r in rows if r["source"] == "books"}) == 2
    assert (
        sum(len(r["input_ids"]) for r in rows if r["source"] == "books")
        == manifest["mix"]["sources"]["books"]["tokens_after"]
        == books["tokens"]
    )
    dropped = [json.loads(line) for f in (out / "dropped").glob("*.jsonl") for line in f.read_text().splitlines()]
    capped = [d for d in dropped if d["status"] == "capped"]
    assert len({d["doc_id"] for d in capped}) == 1 and capped[0]["reason"].startswith("mix:")
    short = [d for d in dropped if d["status"] == "short"]
    assert len(short) == manifest["stats"]["short_dropped"] > 0  # split.tail: drop
    assert all(d["reason"].startswith("short tail") for d in short)


def read_megatron(prefix):
    """Megatron-LM's MMIDIDX index and data, read from the format spec (independent of the writer)."""
    idx = open(f"{prefix}.idx", "rb").read()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", idx[9:17])
    (code,) = struct.unpack("<B", idx[17:18])
    n_seq, n_doc = struct.unpack("<QQ", idx[18:34])
    pos = 34
    lengths = np.frombuffer(idx, dtype="<i4", count=n_seq, offset=pos)
    pos += 4 * n_seq
    pointers = np.frombuffer(idx, dtype="<i8", count=n_seq, offset=pos)
    pos += 8 * n_seq
    docs = np.frombuffer(idx, dtype="<i8", count=n_doc, offset=pos)
    assert pos + 8 * n_doc == len(idx)  # nothing after the document index
    dtype = {1: "<u1", 2: "<i1", 3: "<i2", 4: "<i4", 5: "<i8", 8: "<u2"}[code]
    data = np.fromfile(f"{prefix}.bin", dtype=dtype)
    size = np.dtype(dtype).itemsize
    seqs = [data[p // size : p // size + n].tolist() for p, n in zip(pointers, lengths)]
    return {"version": version, "dtype": dtype, "seqs": seqs, "docs": docs.tolist(), "bin_items": len(data)}


def test_export_megatron_round_trips(prepared, tmp_path, capsys):
    out, manifest = prepared
    knowlm(["corpus", "export-megatron", str(out), str(tmp_path / "mg" / "corpus_text_document")])
    assert "sequences" in capsys.readouterr().out
    got = read_megatron(tmp_path / "mg" / "corpus_text_document")
    rows = read_shards(out).to_pylist()
    assert got["version"] == 1 and got["dtype"] == "<u2"  # the fixture vocab is far below 65500
    assert got["seqs"] == [r["input_ids"] for r in rows]
    assert got["bin_items"] == manifest["stages"]["tokens"]
    # documents: consecutive samples of one doc_id; doc index [0, ends...]
    ends = [i + 1 for i in range(len(rows)) if i + 1 == len(rows) or rows[i + 1]["doc_id"] != rows[i]["doc_id"]]
    assert got["docs"] == [0, *ends] and len(ends) == manifest["stages"]["documents"]
    assert sorted(p.name for p in (tmp_path / "mg").iterdir()) == [
        "corpus_text_document.bin",
        "corpus_text_document.idx",
    ]


def test_export_megatron_int32_for_big_vocabularies_and_packed_rows(tmp_path):
    shards = tmp_path / "c" / "shards"
    shards.mkdir(parents=True)
    rows = [
        {"input_ids": [1, 70000, 5], "doc_id": "a", "source": "s", "doc_starts": [0]},
        {"input_ids": [9, 2, 1, 4], "doc_id": "a", "source": "s", "doc_starts": [0, 2]},
    ]
    write_arrow_file(pa.Table.from_pylist(rows), shards / "part-00000.arrow")
    (tmp_path / "c" / "manifest.json").write_text("{}")
    knowlm(["corpus", "export-megatron", str(tmp_path / "c"), str(tmp_path / "o")])
    got = read_megatron(tmp_path / "o")
    assert got["dtype"] == "<i4" and got["seqs"] == [r["input_ids"] for r in rows]
    assert got["docs"] == [0, 1, 2]  # packed rows hold several documents: one Megatron document each
    with pytest.raises(SystemExit):  # a token id the given vocabulary cannot hold
        knowlm(["corpus", "export-megatron", str(tmp_path / "c"), str(tmp_path / "p"), "--vocab-size", "32000"])
    assert not list(tmp_path.glob("p.*"))


def test_inspect_prints_statistics_and_decoded_samples(prepared, corpus_tokenizer, capsys):
    out, manifest = prepared
    knowlm(["corpus", "inspect", str(out), "--samples", "2"])
    text = capsys.readouterr().out
    st = manifest["stages"]
    assert f"near_dups {st['near_dups']:,}".replace(" ", "") in text.replace(" ", "")
    assert "read = malformed + filtered + exact_dups + near_dups + capped + documents: holds" in text
    for source in manifest["by_source"]:
        assert source in text
    reader = ShardReader(out)
    tok = load_tokenizer(str(corpus_tokenizer))
    for i in range(2):  # decoded with the manifest's tokenizer
        assert tok.decode(reader[i]["input_ids"].tolist())[:60] in text
        assert f"--- row {i}: {reader[i]['doc_id']}" in text
    assert f"shards: {len(manifest['shards'])} files" in text
    knowlm(["corpus", "inspect", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["stages"] == st


def test_inspect_errors_name_the_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        knowlm(["corpus", "inspect", str(tmp_path / "none")])
    assert exc.value.code == 2 and "none" in capsys.readouterr().err
