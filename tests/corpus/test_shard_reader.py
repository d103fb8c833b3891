"""ShardReader: memory-mapped random access to the rows of corpus shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from knowlm_ray.corpus.shards import ShardError, ShardReader, write_arrow_file


def _write_corpus(root, rows_per_file, n_files, seed=0, packed=False):
    """Shards like the pipeline writes them, plus a manifest listing them; returns every row."""
    rng = np.random.default_rng(seed)
    shards = root / "shards"
    shards.mkdir(parents=True)
    expected, entries = [], []
    for k in range(n_files):
        rows = []
        for j in range(rows_per_file):
            n = int(rng.integers(0, 300))
            row = {
                "input_ids": rng.integers(0, 32000, n).astype(np.int32).tolist(),
                "doc_id": f"s{k % 3}/f:{k * rows_per_file + j:06d}",
                "source": f"s{k % 3}",
            }
            if packed:
                row["doc_starts"] = [0] + sorted(
                    rng.choice(np.arange(1, max(n, 2)), min(2, max(n - 1, 0)), replace=False).tolist()
                )
            rows.append(row)
        table = pa.Table.from_pylist(rows)
        entries.append(
            {
                "file": f"shards/part-{k:05d}.arrow",
                **{
                    key: v
                    for key, v in write_arrow_file(table, shards / f"part-{k:05d}.arrow").items()
                    if key != "file"
                },
            }
        )
        expected += rows
    (root / "manifest.json").write_text(json.dumps({"shards": entries}), encoding="utf-8")
    return expected


@pytest.mark.parametrize("packed", [False, True])
def test_random_access_equals_a_full_sequential_read(tmp_path, packed):
    expected = _write_corpus(tmp_path, rows_per_file=37, n_files=4, packed=packed)
    reader = ShardReader(tmp_path, verify=True)
    assert len(reader) == len(expected) == 148 and reader.packed == packed
    sequential = [pa.ipc.open_file(str(f)).read_all().to_pylist() for f in reader.files]
    assert [r for part in sequential for r in part] == expected
    order = np.random.default_rng(1).permutation(len(expected))
    for i in order:
        row = reader[int(i)]
        assert row["input_ids"].tolist() == expected[i]["input_ids"]
        assert (row["doc_id"], row["source"]) == (expected[i]["doc_id"], expected[i]["source"])
        assert reader.source(int(i)) == expected[i]["source"]
        if packed:
            assert row["doc_starts"].tolist() == expected[i]["doc_starts"]
        else:
            assert "doc_starts" not in row and reader.doc_starts(int(i)) is None
    assert reader[-1]["doc_id"] == expected[-1]["doc_id"]
    assert reader.lengths().tolist() == [len(r["input_ids"]) for r in expected]
    names, codes = reader.sources()
    assert [names[c] for c in codes] == [r["source"] for r in expected]
    with pytest.raises(IndexError, match="outside"):
        reader[len(expected)]
    # a list of files works as well as the corpus dir
    assert ShardReader(reader.files[2:])[0]["doc_id"] == expected[74]["doc_id"]


def test_rows_stay_memory_mapped(tmp_path):
    _write_corpus(tmp_path, rows_per_file=4000, n_files=2)  # ~2.4 MB of tokens per file
    size = sum(f.stat().st_size for f in (tmp_path / "shards").iterdir())
    before = pa.total_allocated_bytes()
    reader = ShardReader(tmp_path)
    total = sum(int(reader.input_ids(i).sum()) for i in range(0, len(reader), 7))
    allocated = pa.total_allocated_bytes() - before
    assert total > 0 and size > 4_000_000
    assert allocated < size // 100, f"{allocated} bytes allocated for {size} bytes of shards"
    ids = reader.input_ids(5)
    assert not ids.flags.owndata and not ids.flags.writeable  # a read-only view of the mapping


def test_verify_and_bad_shards_fail_naming_the_file(tmp_path):
    _write_corpus(tmp_path / "c", rows_per_file=5, n_files=2)
    victim = tmp_path / "c" / "shards" / "part-00001.arrow"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    ShardReader(tmp_path / "c")  # unverified: opens (the flipped byte is inside the tokens)
    with pytest.raises(ShardError, match="part-00001.arrow: sha256"):
        ShardReader(tmp_path / "c", verify=True)
    (tmp_path / "bad" / "shards").mkdir(parents=True)
    (tmp_path / "bad" / "shards" / "part-00000.arrow").write_bytes(b"not arrow")
    with pytest.raises(ShardError, match="part-00000.arrow: not an Arrow IPC file"):
        ShardReader(tmp_path / "bad")
    with pytest.raises(ShardError, match="no shard directory"):
        ShardReader(tmp_path / "missing")
    with pytest.raises(ShardError, match="no manifest.json"):
        ShardReader(tmp_path / "bad", verify=True)


def test_mapped_shards_hold_no_open_files(tmp_path):
    import os

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open files through /proc")
    shards = tmp_path / "c" / "shards"
    shards.mkdir(parents=True)
    for k in range(50):
        write_arrow_file(
            pa.Table.from_pylist([{"input_ids": [k, 1], "doc_id": f"d{k}", "source": "s"}]),
            shards / f"part-{k:05d}.arrow",
        )
    before = len(os.listdir("/proc/self/fd"))
    reader = ShardReader(tmp_path / "c")  # thousands of shards must not hit the open-file limit
    assert len(os.listdir("/proc/self/fd")) - before < 5
    assert [reader[k]["input_ids"].tolist() for k in (0, 49)] == [[0, 1], [49, 1]]


def test_uneven_record_batches_are_found_in_constant_steps(tmp_path):
    """Batches of very different sizes (a writer other than ours): every row still found, the
    jump table stays small (rows / median batch size entries)."""
    rng = np.random.default_rng(3)
    sizes = [[1, 50, 3, 200, 7], [64, 64, 64, 5], [1], [300, 2, 2, 2, 90]]
    expected = []
    for k, batch_sizes in enumerate(sizes):
        schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_id", pa.string()), ("source", pa.string())])
        with pa.OSFile(str(tmp_path / f"part-{k:05d}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for n in batch_sizes:
                rows = [
                    {
                        "input_ids": rng.integers(0, 9, int(rng.integers(1, 5))).tolist(),
                        "doc_id": f"d{len(expected) + j}",
                        "source": "s",
                    }
                    for j in range(n)
                ]
                w.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                expected += rows
    reader = ShardReader(sorted(tmp_path.glob("*.arrow")))
    assert len(reader) == len(expected) == sum(map(sum, sizes))
    assert len(reader._jump) <= len(expected) // 7 + 1  # median batch: 7 rows
    for i in np.random.default_rng(0).permutation(len(expected)):
        assert reader[int(i)]["doc_id"] == expected[i]["doc_id"]
        assert reader.input_ids(int(i)).tolist() == expected[i]["input_ids"]
