"""Resuming a DeepSpeed pretraining run on a different number of workers (a node lost for good):
ZeRO-3 2 -> 1 workers (weights, Adam moments and step restored exactly, then trained on with the
global batch kept; every sample read once), ZeRO-2 1 -> 2 workers (weights and moments exact).
Plus the fast driver-side checks (ZeRO stage / model shape mismatches, keep_global_batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from knowlm_ray.config import PretrainConfig
from knowlm_ray.train.checkpoint import (
    IncompatibleCheckpoint,
    TrainState,
    check_resumable,
    check_same_shapes,
    convert_to_universal,
    latest_local_checkpoint,
    read_train_state,
    write_train_state,
    zero_param_shapes,
)
from knowlm_ray.train.data import RankSampler, ShardRows, find_shards
from knowlm_ray.train.loop import fit, prepare_ds_config
from knowlm_ray.train.metrics import read_metrics

ZERO3_REAL = {"preset": "zero3", "zero_optimization": {"stage3_param_persistence_threshold": 0}}
N = 3  # steps before the node is "lost"; the resumed run goes to 2N


def _recording_make_task(log_dir: str, resave_dir: str | None = None):
    """pretrain.make_task, plus: every row a rank reads is appended to ``log_dir/rows-<pid>.txt``;
    with ``resave_dir`` the export instead re-saves the engine's (just restored) DeepSpeed state
    there. Nested, so Ray pickles it by value."""

    def make_task(cfg):
        import os

        from knowlm_ray.train import pretrain as pt

        task = pt.make_task(cfg)
        load = task.load_rows
        log = Path(log_dir) / f"rows-{os.getpid()}.txt"

        class Recorded:
            def __init__(self, rows):
                self.rows = rows

            def __len__(self):
                return len(self.rows)

            def __getitem__(self, i):
                with log.open("a") as f:
                    f.write(f"{i}\n")
                return self.rows[i]

            def doc_starts(self, i):
                return self.rows.doc_starts(i)

        task.load_rows = lambda: Recorded(load())
        if resave_dir is not None:
            task.export = lambda engine, rank: engine.save(resave_dir, "resumed", {})
        return task

    return make_task


def _rows_read(log_dir: Path) -> list[int]:
    return [int(x) for f in sorted(log_dir.glob("rows-*.txt")) for x in f.read_text().split()]


def _universal(ckpt_dir: Path, tag: str, out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{param: {fp32, exp_avg, exp_avg_sq}} of a DeepSpeed checkpoint, whole tensors (DeepSpeed's converter)."""
    zero = convert_to_universal(ckpt_dir, tag, out) / "zero"

    def load(p):
        t = torch.load(p, map_location="cpu", weights_only=False)
        return t["param"] if isinstance(t, dict) else t  # ZeRO-3 files hold the bare tensor

    return {
        d.name: {k: load(d / f"{k}.pt") for k in ("fp32", "exp_avg", "exp_avg_sq")}
        for d in zero.iterdir()
        if d.is_dir()
    }


def _train_then_resume_without_steps(tmp_path: Path, settings: dict, workers: tuple[int, int], stage: int):
    """``workers[0]`` workers train N steps (checkpoint at N); ``workers[1]`` workers then resume it
    with max_steps N (no step) and re-save the restored DeepSpeed state. Asserts the restored
    weights and Adam moments equal the checkpoint's; returns (checkpoint dir, its state, re-save dir)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    rows_before, rows_after, resave = tmp_path / "rows_before", tmp_path / "rows_after", tmp_path / "resaved"
    for d in (rows_before, rows_after):
        d.mkdir()
    # 1. N steps, checkpoint at N
    fit(PretrainConfig(**{**settings, "num_workers": workers[0]}), _recording_make_task(str(rows_before)))
    ckpt = latest_local_checkpoint(Path(settings["storage_path"]) / settings["run_name"])
    saved = read_train_state(ckpt)
    assert (saved.step, saved.world_size, saved.zero_stage) == (N, workers[0], stage)
    assert saved.global_batch == settings["micro_batch_size"] * workers[0]

    # 2. the other world size, max_steps N: restores (universal conversion) and re-saves, no step
    summary = fit(
        PretrainConfig(**{**settings, "num_workers": workers[1]}), _recording_make_task(str(rows_after), str(resave))
    )
    assert summary["resumed_from_step"] == N and summary["steps_this_run"] == 0
    assert len(list((resave / "resumed").glob("*optim_states.pt"))) == workers[1]  # every rank its shard
    # weights at resume == the checkpoint's consolidated fp32 weights (zero_to_fp32), bit for bit
    before = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=saved.tag)
    after = get_fp32_state_dict_from_zero_checkpoint(str(resave), tag="resumed")
    assert before.keys() == after.keys() and len(before) > 5
    # what the loader's shape check reads from a checkpoint covers every parameter
    assert zero_param_shapes(ckpt, saved.tag) == {k: tuple(v.shape) for k, v in before.items()}
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # Adam moments survived the re-partitioning (not a fresh optimizer: those would be zeros)
    u_before, u_after = _universal(ckpt, saved.tag, tmp_path / "u0"), _universal(resave, "resumed", tmp_path / "u1")
    assert u_before.keys() == u_after.keys()
    for name in u_before:
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(u_before[name][key], u_after[name][key]), (name, key)
    assert any(float(v["exp_avg_sq"].abs().sum()) > 0 for v in u_after.values())
    return ckpt, saved, resave


@pytest.mark.slow
def test_zero3_run_resumes_on_fewer_workers_exactly(ray_local, tiny_model, tiny_corpus, tmp_path):
    settings = dict(
        model=str(tiny_model),
        data=str(tiny_corpus),
        deepspeed=ZERO3_REAL,
        micro_batch_size=4,
        seq_len=64,
        lr=3e-3,
        warmup_steps=1,
        max_steps=N,
        save_every=N,
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
        run_name="resize",
    )
    run_dir = tmp_path / "ray" / "resize"
    ckpt, saved, resave = _train_then_resume_without_steps(tmp_path, settings, (2, 1), stage=3)
    # the re-saved Adam step count is the checkpoint's (bias correction continues, not restarts)
    optim = [
        torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]["optimizer_state_dict"]
        for f in (
            sorted((ckpt / saved.tag).glob("*optim_states.pt"))[0],
            next((resave / "resumed").glob("*optim_states.pt")),
        )
    ]
    assert int(optim[0]["state"][0]["step"]) == int(optim[1]["state"][0]["step"]) == N
    # and each param group keeps its own weight decay (0.1 on matrices, 0 on norms)
    decay = [[g["weight_decay"] for g in o["param_groups"]] for o in optim]
    assert decay[0] == decay[1] and sorted(set(decay[1])) == [0.0, 0.1], decay

    # 3. one worker on to 2N, keeping the global batch of 8 by accumulating 2 micro-batches
    summary = fit(
        PretrainConfig(**{**settings, "num_workers": 1, "max_steps": 2 * N, "keep_global_batch": True}),
        _recording_make_task(str(tmp_path / "rows_after")),
    )
    assert summary["resumed_from_step"] == N and summary["step"] == 2 * N
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 2 * N + 1))  # starts at N+1, nothing duplicated
    losses = [r["loss"] for r in rows]
    assert all(np.isfinite(losses)) and sum(losses[N:]) / N < sum(losses[:N]) / N, losses
    final = read_train_state(latest_local_checkpoint(run_dir))
    assert (final.step, final.world_size, final.global_batch) == (2 * N, 1, 8)
    assert final.sampler == {"epoch": 0, "offset": 2 * N * 8}

    # no sample repeated or skipped across the boundary: the rows read are exactly the first 2N
    # global batches of the seeded stream (2 ranks x 4 before, 1 rank x 2 x 4 after)
    stream = RankSampler(len(ShardRows(find_shards(tiny_corpus))), 0, 0, 1, 1).permutation(0)  # seed 0
    read = _rows_read(tmp_path / "rows_before") + _rows_read(tmp_path / "rows_after")
    assert len(read) == len(set(read)) == 2 * N * 8
    assert sorted(read) == sorted(stream[: 2 * N * 8].tolist())


@pytest.mark.slow
def test_zero2_run_resumes_on_more_workers_exactly(ray_local, tiny_model, tiny_corpus, tmp_path):
    settings = dict(
        model=str(tiny_model),
        data=str(tiny_corpus),
        deepspeed="zero2",
        micro_batch_size=4,
        seq_len=64,
        lr=3e-3,
        warmup_steps=1,
        max_steps=N,
        save_every=N,
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
        run_name="resize2",
    )
    _train_then_resume_without_steps(tmp_path, settings, (1, 2), stage=2)


# --------------------------------------------------------------------------- fast, no Ray
def test_checkpoint_of_other_stage_or_engine_is_refused_naming_both_sides():
    state = TrainState(step=40, tag="step00000040", engine="deepspeed", world_size=2, zero_stage=3)
    check_resumable(state, "deepspeed", 1, zero_stage=3)  # other world size: converted, not refused
    check_resumable(state, "deepspeed", 4, zero_stage=3)
    with pytest.raises(
        IncompatibleCheckpoint,
        match=r"deepspeed ZeRO-3 on 2 worker\(s\) at step 40.*"
        r"deepspeed ZeRO-2 on 1 worker\(s\)",
    ):
        check_resumable(state, "deepspeed", 1, "/ckpt", zero_stage=2)
    with pytest.raises(IncompatibleCheckpoint, match=r"this run uses ddp on 2 worker"):
        check_resumable(state, "ddp", 2)
    torch_state = TrainState(step=5, engine="ddp", world_size=2)
    check_resumable(torch_state, "ddp", 1)  # whole weights: any world size
    with pytest.raises(IncompatibleCheckpoint, match=r"written by ddp on 2 worker.*deepspeed ZeRO-3 on 2"):
        check_resumable(torch_state, "deepspeed", 2, zero_stage=3)


def test_model_shape_mismatch_names_the_parameter_and_both_shapes():
    saved = {"lm_head.weight": (3000, 64), "model.norm.weight": (64,)}
    check_same_shapes(saved, dict(saved), "/ckpt")
    with pytest.raises(
        IncompatibleCheckpoint,
        match=r"/ckpt.*lm_head.weight: checkpoint \[3000, 64\] vs model "
        r"\[4000, 64\].*not in the checkpoint \['extra.weight'\]",
    ):
        check_same_shapes(
            saved, {"lm_head.weight": (4000, 64), "model.norm.weight": (64,), "extra.weight": (2,)}, "/ckpt"
        )


def _fake_checkpoint(storage: Path, run: str, state: TrainState) -> None:
    """train_state.json and DeepSpeed's file names for every rank (empty torch archives): a
    complete checkpoint to latest_local_checkpoint, which passes over one missing a rank's files."""
    import torch

    d = storage / run / "checkpoint_2026-01-01_00-00-00.000000"
    (d / state.tag).mkdir(parents=True)
    torch.save({}, d / state.tag / "mp_rank_00_model_states.pt")  # ZeRO-1/2: rank 0's
    for r in range(state.world_size):
        torch.save({}, d / state.tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")  # ZeRO-3: each rank's
        torch.save({}, d / state.tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    write_train_state(d, state)


def test_keep_global_batch_sets_accumulation_or_explains(tiny_model, tmp_path):
    state = TrainState(step=10, tag="step00000010", engine="deepspeed", world_size=4, zero_stage=3, global_batch=32)
    _fake_checkpoint(tmp_path, "run", state)
    base = dict(
        model=str(tiny_model),
        data=str(tmp_path),
        storage_path=str(tmp_path),
        run_name="run",
        micro_batch_size=4,
        num_workers=2,
    )
    cfg = PretrainConfig(**base, keep_global_batch=True)
    ds = prepare_ds_config(cfg)
    assert cfg.grad_accum == 4 and cfg.global_batch == 32
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 32
    cfg = PretrainConfig(**base)  # default: accumulation kept, the global batch follows the workers
    prepare_ds_config(cfg)
    assert cfg.grad_accum == 1 and cfg.global_batch == 8
    with pytest.raises(IncompatibleCheckpoint, match=r"global batch 32 .*not a multiple of micro_batch_size 4 x 3"):
        prepare_ds_config(PretrainConfig(**{**base, "num_workers": 3}, keep_global_batch=True))
    assert json.loads((next((tmp_path / "run").iterdir()) / "train_state.json").read_text())["global_batch"] == 32
