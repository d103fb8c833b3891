"""The loop's plain-Python core, in this process without Ray: train, checkpoint, exact resume, no-op re-run."""
from __future__ import annotations

import shutil

import pytest

from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import LocalCheckpoint, read_train_state
from knowlm_ray.train.loop import WorkerContext, run_worker
from knowlm_ray.train.metrics import read_metrics


def _run(cfg, keep, checkpoint=None):
    saved = {}

    def report(metrics, directory):
        if directory:
            saved[metrics["step"]] = shutil.copytree(directory, keep / f"ckpt{metrics['step']}")

    ctx = WorkerContext(checkpoint=LocalCheckpoint(checkpoint) if checkpoint else None, report=report)
    return run_worker(cfg, pretrain.make_task(cfg), None, ctx), saved


def test_local_loop_resumes_exactly_and_rerun_is_noop(tiny_model, tiny_corpus, tmp_path):
    cfg = PretrainConfig(model=str(tiny_model), data=str(tiny_corpus), num_workers=0, deepspeed="ddp",
                         micro_batch_size=2, grad_accum=2, seq_len=32, max_steps=6, save_every=2,
                         warmup_steps=1, output_dir=str(tmp_path / "out"), storage_path=str(tmp_path / "ray"))
    summary, saved = _run(cfg, tmp_path)
    straight = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in straight] == [1, 2, 3, 4, 5, 6]
    assert sorted(saved) == [2, 4, 6] and summary["engine"] == "torch"
    state = read_train_state(saved[4])
    assert state.step == 4 and state.sampler == {"epoch": 0, "offset": 4 * 2 * 2}

    # Resume from step 4 (as after a crash): steps 5-6 again, identical losses, no duplicate lines.
    summary, _ = _run(cfg, tmp_path / "again", checkpoint=saved[4])
    assert summary["start_step"] == 4
    resumed = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed[4:]] == pytest.approx([r["loss"] for r in straight[4:]], abs=1e-5)

    # max_steps reached: a re-run trains nothing and re-exports the same model.
    summary, again = _run(cfg, tmp_path / "noop", checkpoint=saved[6])
    assert summary["start_step"] == 6 and summary["step"] == 6 and not again
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 6
    assert (tmp_path / "out" / "model.safetensors").is_file()
