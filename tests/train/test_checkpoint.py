"""A full disk while a training checkpoint is written: one line, the previous checkpoint intact. A\ncheckpoint whose writing or upload stopped part-way is never the one to resume from."""

from __future__ import annotations

import os
import shutil

import pytest

from knowlm_ray.atomic import DiskFullError
from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import (
    TrainState,
    incomplete_reason,
    latest_local_checkpoint,
    read_train_state,
    step_tag,
    write_train_state,
    writing_checkpoint,
)
from knowlm_ray.train.loop import WorkerContext, run_worker


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(tiny_model, tiny_corpus, tmp_path):
    """A real ENOSPC from the kernel: the step-4 upload's train_state.json is a link to /dev/full
    (every write to it fails with ENOSPC), the only way to fill a disk here without root."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=2,
        seq_len=32,
        max_steps=4,
        save_every=2,
        warmup_steps=1,
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
    )
    store = tmp_path / "store"
    kept = {}

    def upload(metrics, directory):  # what Ray Train's report does: copy the checkpoint to storage
        if not directory:
            return
        dest = store / f"checkpoint_{metrics['step']}"
        if metrics["step"] == 4:
            dest.mkdir(parents=True)
            (dest / "train_state.json").symlink_to("/dev/full")
        shutil.copytree(directory, dest, dirs_exist_ok=True)
        kept[metrics["step"]] = _tree(dest)

    with pytest.raises(DiskFullError) as err:
        run_worker(cfg, pretrain.make_task(cfg), None, WorkerContext(report=upload))
    assert str(err.value) == (
        f"no space left on device writing the step-4 checkpoint ({store}/checkpoint_4/train_state.json); the "
        "previous checkpoint is intact: free some space (or point storage_path / TMPDIR elsewhere) and run the "
        "same command to resume from it"
    )
    assert list(kept) == [2] and _tree(store / "checkpoint_2") == kept[2]
    assert read_train_state(store / "checkpoint_2").step == 2
    # the step-4 folder the full disk left behind is not what a re-run resumes from
    assert latest_local_checkpoint(store) == store / "checkpoint_2"


def test_other_failures_pass_through_and_a_worker_group_error_is_unwrapped(tmp_path):
    from ray.train import WorkerGroupError

    from knowlm_ray.atomic import disk_full_cause

    with pytest.raises(ValueError, match="not about space"):
        with writing_checkpoint(tmp_path, 3):
            raise ValueError("not about space")
    with pytest.raises(DiskFullError) as err:
        with writing_checkpoint(tmp_path, 3):
            raise OSError(28, "No space left on device", str(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    # what fit() gets back from Ray Train when a worker raised it
    group = WorkerGroupError("rank 0 failed", {0: err.value})
    assert disk_full_cause(group) is err.value


def _torch_checkpoint(d, step):
    """What TorchEngine.save and rank 0 write (torch / ddp engines), real file formats."""
    import torch
    from safetensors.torch import save_file

    tag = d / step_tag(step)
    tag.mkdir(parents=True)
    save_file({"w": torch.full((64, 64), float(step))}, str(tag / "trainable.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64, 64)}}, "param_groups": []}, tag / "optimizer.pt")
    write_train_state(d, TrainState(step=step, tag=step_tag(step), engine="ddp", world_size=2))
    return d


def _deepspeed_checkpoint(d, step, world, stage, ranks=None):
    """DeepSpeed's file names for ``ranks`` (default all) of a ZeRO-``stage`` save on ``world`` ranks."""
    import torch

    tag = d / step_tag(step)
    tag.mkdir(parents=True)
    for r in range(world) if ranks is None else ranks:
        if stage == 3 or r == 0:
            name = f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
            torch.save({"module": None}, tag / name)
        torch.save({"optimizer_state_dict": {}}, tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    write_train_state(
        d, TrainState(step=step, tag=step_tag(step), engine="deepspeed", world_size=world, zero_stage=stage)
    )
    return d


def test_the_newest_complete_checkpoint_is_picked_over_a_half_written_newer_one(tmp_path, caplog):
    run = tmp_path / "run"
    _torch_checkpoint(run / "checkpoint_2", 2)
    newest = _torch_checkpoint(run / "checkpoint_4", 4)
    assert latest_local_checkpoint(run) == newest and incomplete_reason(newest) is None
    # an upload stopped in the middle of optimizer.pt: the file is there, cut short
    opt = newest / step_tag(4) / "optimizer.pt"
    whole = opt.read_bytes()
    opt.write_bytes(whole[: len(whole) // 2])
    assert latest_local_checkpoint(run) == run / "checkpoint_2"
    assert incomplete_reason(newest) == "step00000004/optimizer.pt is cut short (no zip directory at its end)"
    assert f"passing over the incomplete checkpoint {newest}: step00000004/optimizer.pt is cut short" in caplog.text
    # ... in the middle of the weights
    opt.write_bytes(whole)
    weights = newest / step_tag(4) / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert latest_local_checkpoint(run) == run / "checkpoint_2"
    assert "file truncated" in incomplete_reason(newest)
    # ... before the weights arrived at all; a train_state.json cut short is passed over too
    weights.unlink()
    assert incomplete_reason(newest) == "step00000004/ lacks trainable.safetensors"
    state = run / "checkpoint_6" / "train_state.json"
    state.parent.mkdir()
    state.write_text('{"step": 6, "tag": "step000')
    assert incomplete_reason(state.parent) == "train_state.json does not read (JSONDecodeError)"
    assert latest_local_checkpoint(run) == run / "checkpoint_2"
    _torch_checkpoint(run / "checkpoint_8", 8)
    assert latest_local_checkpoint(run) == run / "checkpoint_8"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_deepspeed_checkpoint_is_complete_only_with_every_ranks_files(tmp_path, stage):
    """Ray Train uploads each rank's files on its own: rank 0's (with train_state.json) may be
    there while rank 1's optimizer partition (and, ZeRO-3, its model states) is not yet."""
    run = tmp_path / "run"
    _deepspeed_checkpoint(run / "checkpoint_a", 10, world=2, stage=stage)
    half = _deepspeed_checkpoint(run / "checkpoint_b", 20, world=2, stage=stage, ranks=[0])
    assert latest_local_checkpoint(run) == run / "checkpoint_a"
    lacks = "*zero_pp_rank_1_mp_rank_*_optim_states.pt"
    if stage == 3:
        lacks = "zero_pp_rank_1_mp_rank_*_model_states.pt, " + lacks
    assert incomplete_reason(half) == f"step00000020/ lacks {lacks}"
    import torch

    if stage == 3:
        torch.save({"module": None}, half / step_tag(20) / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    torch.save({}, half / step_tag(20) / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert latest_local_checkpoint(run) == half
