"""One real 2-worker ZeRO-3 pretraining fit on the session's local Ray; the same fit with a worker
SIGKILLed mid-run (exact resume); then a resumed re-run with more steps (keep-last-K)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import latest_local_checkpoint, read_train_state
from knowlm_ray.train.metrics import read_metrics

pytestmark = pytest.mark.slow
ZERO3_REAL = {"preset": "zero3", "zero_optimization": {"stage3_param_persistence_threshold": 0}}


@pytest.fixture(scope="module")
def settings(tiny_model, tiny_corpus, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pretrain")
    return dict(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=2,
        deepspeed=ZERO3_REAL,
        micro_batch_size=4,
        seq_len=64,
        lr=3e-3,
        warmup_steps=1,
        max_steps=8,
        save_every=4,
        output_dir=str(root / "out"),
        storage_path=str(root / "ray"),
        run_name="pretrain_test",
    )


@pytest.fixture(scope="module")
def first_run(ray_local, settings) -> dict:
    return pretrain.run(PretrainConfig(**settings))


def test_zero3_fit_trains_checkpoints_and_exports(first_run, settings, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(settings["output_dir"])
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in rows)
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert first_run["step"] == 8 and first_run["resumed_from_step"] == 0

    ckpt = latest_local_checkpoint(Path(settings["storage_path"]) / "pretrain_test")
    state = read_train_state(ckpt)
    assert state.step == 8 and state.engine == "deepspeed" and state.world_size == 2
    assert state.sampler == {"epoch": 0, "offset": 8 * 4 * 2}
    assert len(list((ckpt / state.tag).glob("zero_pp_rank_*_optim_states.pt"))) == 2  # both ranks' shards

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(p.numel() > 0 for p in model.parameters())
    assert (out / "tokenizer.model").is_file() and len(AutoTokenizer.from_pretrained(out)) > 300
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    trained = model.state_dict()
    assert not torch.equal(initial["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    assert not torch.equal(
        initial["model.layers.0.self_attn.q_proj.weight"], trained["model.layers.0.self_attn.q_proj.weight"]
    )


def _gated_make_task(marker_dir: str, gate_after_rows: int):
    """pretrain.make_task, plus: each worker writes its PID; on the first attempt rank 1 stops
    before reading row ``gate_after_rows`` of its stream (i.e. inside a step, while rank 0 waits
    in a collective) until the driver has SIGKILLed it. Nested, so Ray pickles it by value."""

    def make_task(cfg):
        import ray.train

        from knowlm_ray.train import pretrain as pt

        task = pt.make_task(cfg)
        rank = ray.train.get_context().get_world_rank()
        d = Path(marker_dir)
        (d / f"rank{rank}.pid").write_text(str(os.getpid()))
        if rank == 1 and not (d / "killed").exists():
            load = task.load_rows

            class Gate:
                def __init__(self, rows):
                    self.rows, self.calls = rows, 0

                def __len__(self):
                    return len(self.rows)

                def __getitem__(self, i):
                    self.calls += 1
                    if self.calls > gate_after_rows:
                        (d / "blocked").touch()
                        while True:  # until SIGKILL
                            time.sleep(0.05)
                    return self.rows[i]

            task.load_rows = lambda: Gate(load())
        return task

    return make_task


def test_sigkilled_worker_resumes_with_identical_losses(first_run, settings, tmp_path):
    """Kill rank 1 (SIGKILL, from a driver thread) in step 6 of 8; the last checkpoint is step 4.
    Ray Train restarts the worker group from it; every step's loss equals the uninterrupted run's."""
    from knowlm_ray.train.loop import fit

    cfg = PretrainConfig(
        **{**settings, "output_dir": str(tmp_path / "out"), "run_name": "pretrain_killed", "max_failures": 1}
    )
    pretrain.check_inputs(cfg)
    metrics = tmp_path / "out" / "metrics.jsonl"
    killed = {}

    def killer():
        deadline = time.monotonic() + 240
        while True:
            steps = [r["step"] for r in read_metrics(metrics)]
            blocked = (tmp_path / "blocked").exists()
            # (after the deadline kill anyway, so a broken gate fails the asserts instead of hanging)
            if blocked and (steps and max(steps) >= 5 or time.monotonic() > deadline):
                (tmp_path / "killed").touch()  # the restarted worker must not block again
                pid = int((tmp_path / "rank1.pid").read_text())
                killed.update(pid=pid, steps_before=steps)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    # rank 1 reads micro_batch_size rows per step: block when step 6 asks for its first row
    summary = fit(cfg, _gated_make_task(str(tmp_path), gate_after_rows=5 * settings["micro_batch_size"]))
    thread.join(timeout=5)

    assert killed.get("steps_before") == [1, 2, 3, 4, 5], killed  # killed inside step 6
    assert int((tmp_path / "rank1.pid").read_text()) != killed["pid"]  # a new worker process finished
    assert summary["step"] == 8 and summary["resumed_from_step"] == 4
    reference = {r["step"]: r["loss"] for r in read_metrics(Path(settings["output_dir"]) / "metrics.jsonl")}
    resumed = read_metrics(metrics)
    assert [r["step"] for r in resumed] == list(range(1, 9))  # steps 5-6 re-run, not duplicated
    for r in resumed:
        assert r["loss"] == reference[r["step"]], (r["step"], r["loss"], reference)  # bit-for-bit (6 decimals logged)


def test_rerun_with_more_steps_resumes_after_the_checkpoint(first_run, settings):
    summary = pretrain.run(PretrainConfig(**{**settings, "max_steps": 10}))
    assert summary["resumed_from_step"] == 8 and summary["step"] == 10
    assert summary["steps_this_run"] == 2
    steps = [r["step"] for r in read_metrics(Path(settings["output_dir"]) / "metrics.jsonl")]
    assert steps == list(range(1, 11))  # continued at 9, nothing duplicated
    # keep_checkpoints 2: of the checkpoints at steps 4, 8 and 10 only the last two remain
    run_dir = Path(settings["storage_path"]) / "pretrain_test"
    kept = sorted(read_train_state(p).step for p in run_dir.iterdir() if (p / "train_state.json").is_file())
    assert kept == [8, 10]
