"""Shard reading, the resumable rank sampler and right-padding collation."""

from __future__ import annotations

import numpy as np
import pytest

from knowlm_ray.train.data import (
    IGNORE_INDEX,
    BatchStream,
    DataError,
    RankSampler,
    RecordRows,
    SamplerState,
    ShardRows,
    collate,
    find_shards,
)


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
    batch = collate(
        [(np.array([5, 6, 7, 8, 9]), None), (np.array([1, 2]), np.array([IGNORE_INDEX, 2]))], seq_len=4, pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 8], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]]


def test_batch_stream_over_records():
    rows = RecordRows(
        [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    )
    stream = BatchStream(rows, RankSampler(len(rows), 0, 0, 1, 2), seq_len=8, pad_id=0)
    batch = stream.next_batch()
    assert batch["input_ids"].shape == (2, 3)
    assert stream.state_dict() == {"epoch": 1, "offset": 0}
    with pytest.raises(DataError):
        RecordRows([])


# --------------------------------------------------------------------------- mixing and packing
def _write_table(path, cols: dict):
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(cols)
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)


def test_mixed_sampler_hits_the_shares_and_resumes_exactly():
    from knowlm_ray.train.data import MixedSampler

    groups = {"big": np.arange(0, 900), "small": np.arange(900, 1000)}
    probs = {"big": 0.5, "small": 0.5}  # the small source is upsampled: ~10 epochs of it below
    a0 = MixedSampler(groups, probs, seed=1, rank=0, world_size=2, micro_batch=4)
    a1 = MixedSampler(groups, probs, seed=1, rank=1, world_size=2, micro_batch=4)
    steps0 = [a0.next_indices() for _ in range(250)]
    steps1 = [a1.next_indices() for _ in range(250)]
    assert all(not set(x) & set(y) or len(set(x + y)) < 8 for x, y in zip(steps0, steps1))
    flat = np.array([i for s in steps0 + steps1 for i in s])
    share_small = float((flat >= 900).mean())
    assert 0.46 < share_small < 0.54, share_small
    assert a0.state_dict()["sources"]["small"]["epoch"] >= 9  # repeats, each epoch a new permutation

    state = a0.state_dict()
    more = [a0.next_indices() for _ in range(20)]
    again = MixedSampler(groups, probs, seed=1, rank=0, world_size=2, micro_batch=4, state=state)
    assert [again.next_indices() for _ in range(20)] == more
    assert (
        MixedSampler(groups, probs, 2, 0, 2, 4).next_indices() != MixedSampler(groups, probs, 1, 0, 2, 4).next_indices()
    )


def test_mixing_probs_from_config_or_manifest():
    from knowlm_ray.train.data import manifest_source_weights, mixing_probs

    counts = {"zh": 10, "en": 30}
    assert mixing_probs(counts, {"zh": 3, "en": 1}, {}) == {"zh": 0.75, "en": 0.25}
    assert mixing_probs(counts, None, {"zh": 1.0, "en": 1.0}) is None  # all equal: natural order
    # manifest weights multiply the natural share: zh 2 x 10, en 1 x 30
    assert mixing_probs(counts, None, {"zh": 2.0, "en": 1.0}) == pytest.approx({"zh": 0.4, "en": 0.6})
    with pytest.raises(DataError, match=r"no weight for source\(s\) \['en'\]"):
        mixing_probs(counts, {"zh": 1}, {})
    with pytest.raises(DataError, match=r"\['code'\] that the data does not have"):
        mixing_probs(counts, {"zh": 1, "en": 1, "code": 1}, {})
    manifest = {
        "by_source": {"zh": {"documents": 3, "weight": 2.0}, "en": {"documents": 4}},
        "config": {"inputs": [{"source": "en", "weight": 0.5}, {"source": "zh", "weight": 9}]},
    }
    assert manifest_source_weights(manifest) == {"zh": 2.0, "en": 0.5}


def test_pretrain_mixes_sources_named_by_data_mix(tmp_path, tiny_model):
    from knowlm_ray.config import ConfigError, PretrainConfig
    from knowlm_ray.train import pretrain

    rows = [[1, 5 + i % 7, 6, 7] for i in range(40)]
    _write_table(
        tmp_path / "c" / "shards" / "part-00000.arrow",
        {"input_ids": pa_list(rows), "doc_id": [f"d{i}" for i in range(40)], "source": ["zh"] * 10 + ["en"] * 30},
    )
    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tmp_path / "c"),
        data_mix={"zh": 1, "en": 1},
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=5,
        num_epochs=2,
    )
    pretrain.check_inputs(cfg)
    assert cfg.max_steps == 16  # 2 epochs x 40 rows / 5 per step
    shard_rows = ShardRows(find_shards(tmp_path / "c"))
    names, codes = shard_rows.sources()
    sampler = pretrain.make_sampler_factory(cfg)(shard_rows, 0, 1, None)
    drawn = [i for _ in range(40) for i in sampler.next_indices()]
    zh = names.index("zh")
    assert 0.4 < float(np.mean(codes[drawn] == zh)) < 0.6  # 1:1 although zh is a quarter of the rows
    with pytest.raises(ConfigError, match="baike"):
        pretrain.check_inputs(cfg.model_copy(update={"data_mix": {"zh": 1, "en": 1, "baike": 1}}))


def pa_list(rows):
    import pyarrow as pa

    return pa.array(rows, type=pa.list_(pa.int32()))


def test_packed_rows_restart_positions_and_mask_the_boundary_targets(tmp_path):
    _write_table(
        tmp_path / "p" / "shards" / "part-00000.arrow",
        {
            "input_ids": pa_list([[1, 10, 11, 2, 1, 20, 21, 22], [30, 31, 2, 1, 40]]),
            "doc_id": ["a", "b"],
            "source": ["s", "s"],
            "doc_starts": pa_list([[0, 4], [0, 3]]),
        },
    )
    rows = ShardRows(find_shards(tmp_path / "p"))
    assert rows.packed and rows.doc_starts(1).tolist() == [0, 3]
    stream = BatchStream(rows, RankSampler(2, 0, 0, 1, 2), seq_len=8, pad_id=0, packed="block")
    batch = stream.collate_indices([0, 1])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["labels"][0].tolist() == [1, 10, 11, 2, IGNORE_INDEX, 20, 21, 22]  # no target across docs
    assert batch["labels"][1].tolist() == [30, 31, 2, IGNORE_INDEX, 40] + [IGNORE_INDEX] * 3
    assert "attention_mask" not in batch and int(batch["num_tokens"]) == 13  # block: mask from positions
    assert "attention_mask" in BatchStream(rows, None, 8, 0, packed="positions").collate_indices([0])
    # no doc_starts column: document starts are the BOS tokens; cut rows only keep starts inside
    plain = BatchStream([(np.array([1, 5, 6, 1, 7]), None)], None, seq_len=4, pad_id=0, packed="block", bos_id=1)
    assert plain.collate_indices([0])["position_ids"].tolist() == [[0, 1, 2, 0]]
    single = BatchStream([(np.array([1, 5, 6]), None)], None, seq_len=8, pad_id=0, packed="block", bos_id=1)
    assert "position_ids" not in single.collate_indices([0])  # one document: the ordinary path


def test_packed_documents_do_not_see_each_other(tiny_model):
    """Block mode: the second document's logits in a packed row equal those of that document alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from knowlm_ray.train.engine import model_inputs

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    doc1, doc2 = np.array([1, 50, 60, 70, 80, 2]), np.array([1, 90, 100, 110, 2])
    packed = [(np.concatenate([doc1, doc2]), None)]

    class Packed(list):
        def doc_starts(self, i):
            return np.array([0, len(doc1)])

    with torch.no_grad():
        alone = model(input_ids=torch.as_tensor(doc2[None])).logits[0]
        block = model(
            **model_inputs(BatchStream(Packed(packed), None, 64, 0, "block").collate_indices([0]), "cpu")
        ).logits[0, len(doc1) :]
        positions = model(
            **model_inputs(BatchStream(Packed(packed), None, 64, 0, "positions").collate_indices([0]), "cpu")
        ).logits[0, len(doc1) :]
    assert torch.allclose(block, alone, atol=1e-5), (block - alone).abs().max()
    assert not torch.allclose(positions, alone, atol=1e-3)  # positions only: attention still crosses
