"""Shard reading, the resumable rank sampler and right-padding collation."""
from __future__ import annotations

import numpy as np
import pytest

from knowlm_ray.train.data import (IGNORE_INDEX, BatchStream, DataError, RankSampler, RecordRows, SamplerState,
                                   ShardRows, collate, find_shards)


def test_find_shards_accepts_out_dir_or_shards_dir(tmp_path, shard_writer):
    write_shards = shard_writer
    write_shards(tmp_path / "c", [[1, 2, 3]] * 5, per_shard=2)
    files = find_shards(tmp_path / "c")
    assert [f.name for f in files] == ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]
    assert find_shards(tmp_path / "c" / "shards") == files
    with pytest.raises(DataError, match="no Arrow shards"):
        find_shards(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_shards(tmp_path / "nope")


def test_shard_rows_are_memory_mapped_rows_skipping_useless_ones(tmp_path, shard_writer):
    write_shards = shard_writer
    rows = [[5, 6, 7], [9], [], [1, 2, 3, 4]]  # 1- and 0-token rows have no next token to learn
    write_shards(tmp_path, rows, per_shard=3)
    data = ShardRows(find_shards(tmp_path))
    assert len(data) == 2
    ids, labels = data[1]
    assert ids.tolist() == [1, 2, 3, 4] and labels is None
    write_shards(tmp_path / "lab", [[1, 2, 3]], labels=[[IGNORE_INDEX, 2, 3]])
    assert ShardRows(find_shards(tmp_path / "lab"))[0][1].tolist() == [IGNORE_INDEX, 2, 3]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-00000.arrow").write_bytes(b"not arrow")
    with pytest.raises(DataError, match="not an Arrow IPC file"):
        ShardRows(find_shards(tmp_path / "bad"))


def _take(sampler: RankSampler, steps: int) -> list[list[int]]:
    return [sampler.next_indices() for _ in range(steps)]


def test_sampler_is_deterministic_and_ranks_are_disjoint():
    a = _take(RankSampler(40, seed=3, rank=0, world_size=2, micro_batch=4), 5)
    assert a == _take(RankSampler(40, seed=3, rank=0, world_size=2, micro_batch=4), 5)
    assert a != _take(RankSampler(40, seed=4, rank=0, world_size=2, micro_batch=4), 5)
    b = _take(RankSampler(40, seed=3, rank=1, world_size=2, micro_batch=4), 5)
    seen = [i for step in a + b for i in step]
    assert len(seen) == len(set(seen)) == 40  # one epoch: every row once, no rank overlap


def test_sampler_crosses_epochs_and_resumes_at_the_exact_position():
    s = RankSampler(10, seed=0, rank=1, world_size=2, micro_batch=2)
    _take(s, 3)  # 12 samples: one full epoch of 10, then 2 into epoch 1
    assert s.state_dict() == {"epoch": 1, "offset": 2}
    straight = _take(s, 4)
    resumed = RankSampler(10, seed=0, rank=1, world_size=2, micro_batch=2, state={"epoch": 1, "offset": 2})
    assert _take(resumed, 4) == straight
    assert RankSampler(10, 0, 0, 1, 1, SamplerState(2, 3)).state == SamplerState(2, 3)


def test_collate_right_pads_with_masked_labels_and_truncates():
    batch = collate([(np.array([5, 6, 7, 8, 9]), None), (np.array([1, 2]), np.array([IGNORE_INDEX, 2]))],
                    seq_len=4, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 8], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]]


def test_batch_stream_over_records():
    rows = RecordRows([{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]},
                       {"input_ids": [4, 5], "labels": [4, 5]}])
    stream = BatchStream(rows, RankSampler(len(rows), 0, 0, 1, 2), seq_len=8, pad_id=0)
    batch = stream.next_batch()
    assert batch["input_ids"].shape == (2, 3)
    assert stream.state_dict() == {"epoch": 1, "offset": 0}
    with pytest.raises(DataError):
        RecordRows([])
