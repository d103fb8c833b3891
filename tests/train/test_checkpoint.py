"""A full disk while a training checkpoint is written: one line, the previous checkpoint intact."""

from __future__ import annotations

import os
import shutil

import pytest

from knowlm_ray.atomic import DiskFullError
from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import read_train_state, writing_checkpoint
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
