"""The one training loop behind pretraining and LoRA, and its Ray Train V2 launcher.

``run_worker`` is the plain-Python core (one rank: build, resume, train, checkpoint, export);
``fit`` wraps it in a ``TorchTrainer``. What differs between jobs is a ``Task``: how to build the
model, where rows come from, and what the final export is.

Resume: Ray Train V2 hands the newest checkpoint of ``storage_path/run_name`` back through
``ray.train.get_checkpoint()`` when the same command runs again (or after a worker failure);
the loop loads it, cuts metrics.jsonl back to its step and continues at the next step.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from knowlm_ray.train.checkpoint import (TrainState, check_resumable, latest_local_checkpoint, read_train_state,
                                         step_tag, write_train_state)
from knowlm_ray.train.data import BatchStream, RankSampler, Rows
from knowlm_ray.train.deepspeed_presets import build_ds_config, validate_ds_config, zero_stage
from knowlm_ray.train.engine import DeepSpeedEngine, TorchEngine, use_deepspeed
from knowlm_ray.train.metrics import MetricsLog, read_metrics
from knowlm_ray.train.schedule import lr_at


@dataclass
class Task:
    """What differs between jobs; every callable runs inside a worker."""

    build_model: Callable[[], torch.nn.Module]  # called after DeepSpeed's HF hook is set (ZeRO-3 loads partitioned)
    load_rows: Callable[[], Rows]
    export: Callable[[Any, int], Any]  # (engine, rank) -> path; collective: every rank calls it
    seq_len: int
    pad_id: int = 0


@dataclass
class WorkerContext:
    """Where a rank runs; built from ``ray.train.get_context()`` or by hand in tests."""

    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    checkpoint: Any = None  # anything with ``.as_directory()`` (ray.train.Checkpoint, LocalCheckpoint)
    report: Callable[[dict, str | None], None] = field(default=lambda metrics, directory: None)


def _all_reduce_sum(values: list[float], ctx: WorkerContext, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if ctx.distributed:
        torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def _quiet_worker() -> None:
    import warnings

    # torch 2.13 deprecates the collectives DeepSpeed 0.19 calls: one warning per call otherwise.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" bars in worker logs
    except ImportError:
        pass


def _make_engine(model_builder, cfg, ds_config, ctx: WorkerContext):
    """Returns (engine, keepalive). ZeRO-3 needs HfDeepSpeedConfig alive *before* the model is
    built, so from_pretrained partitions weights as it loads them (zero.Init)."""
    if not use_deepspeed(ds_config, ctx.distributed):
        return TorchEngine(model_builder(), cfg, ctx.distributed), None
    import deepspeed

    # Ray already made the process group; DeepSpeed must adopt it or it sees world size 1.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    hook = None
    if zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hook = HfDeepSpeedConfig(ds_config)  # a weakref inside transformers: keep it alive
    return DeepSpeedEngine(model_builder(), cfg, ds_config), hook


def _restore(engine, ctx: WorkerContext) -> TrainState:
    if ctx.checkpoint is None:
        return TrainState()
    with ctx.checkpoint.as_directory() as d:
        state = read_train_state(d)
        engine.load(d, state.tag)
    return state


def _save(engine, state: TrainState, metrics: dict, ctx: WorkerContext) -> None:
    with tempfile.TemporaryDirectory(prefix="knowlm-ckpt-") as d:
        engine.save(d, state.tag, client_state={"step": state.step, "sampler": state.sampler})
        if ctx.rank == 0:
            write_train_state(d, state)
        wrote = any(Path(d).iterdir())
        ctx.report(metrics, d if wrote else None)  # synchronous upload: d may go afterwards


def run_worker(cfg, task: Task, ds_config: dict | None, ctx: WorkerContext) -> dict:
    """Train one rank to ``cfg.max_steps`` (resuming if a checkpoint is given), then export."""
    _quiet_worker()
    t_init = time.perf_counter()
    torch.manual_seed(cfg.seed)  # identical initial weights (LoRA matrices) on every rank
    engine, _hook = _make_engine(task.build_model, cfg, ds_config, ctx)
    state = _restore(engine, ctx)
    start_step = state.step
    rows = task.load_rows()
    sampler = RankSampler(len(rows), cfg.seed, ctx.rank, ctx.world_size, cfg.micro_batch_size, state.sampler)
    stream = BatchStream(rows, sampler, task.seq_len, task.pad_id)
    log = MetricsLog(Path(cfg.output_dir) / "metrics.jsonl", start_step) if ctx.rank == 0 else None
    engine_name = "deepspeed" if isinstance(engine, DeepSpeedEngine) else ("ddp" if ctx.distributed else "torch")
    loss = None
    t_start = time.perf_counter()
    try:
        for step in range(start_step + 1, cfg.max_steps + 1):
            # Dropout noise depends only on (seed, step, rank): a resumed run draws what it would have.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + ctx.rank)
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            t0 = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            for _ in range(cfg.grad_accum):
                batch = stream.next_batch()
                loss_sum += float(engine.micro_step(batch, lr))
                tokens += int(batch["attention_mask"].sum())
            total_loss, total_tokens = _all_reduce_sum([loss_sum, tokens], ctx, engine.device)
            loss = total_loss / (cfg.grad_accum * ctx.world_size)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step} (lr {lr:.3g}); stopping")
            tps = total_tokens / max(time.perf_counter() - t0, 1e-9)
            if log is not None:
                log.log(step, loss, lr, tps)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    print(f"[{cfg.run_name}] step {step}/{cfg.max_steps} loss {loss:.4f} lr {lr:.3g} "
                          f"{tps:,.0f} tok/s", flush=True)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                state = TrainState(step=step, tag=step_tag(step), sampler=stream.state_dict(),
                                   engine=engine_name, world_size=ctx.world_size)
                _save(engine, state, {"step": step, "loss": loss, "start_step": start_step}, ctx)
    finally:
        if log is not None:
            log.close()
    t_export = time.perf_counter()
    out = task.export(engine, ctx.rank)
    summary = {"step": state.step, "start_step": start_step, "loss": loss,
               "init_s": round(t_start - t_init, 2), "train_s": round(t_export - t_start, 2),
               "export_s": round(time.perf_counter() - t_export, 2),
               "output_dir": str(out or cfg.output_dir), "engine": engine_name}
    return summary  # rank 0's comes back to the driver as Result.return_value


# --------------------------------------------------------------------------- Ray Train launcher
def _ray_report(metrics: dict, directory: str | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
    ray.train.report(metrics, checkpoint=checkpoint)


def _train_fn(config: dict) -> dict:
    """Entry point of each Ray Train worker."""
    import ray.train

    tctx = ray.train.get_context()
    ctx = WorkerContext(
        rank=tctx.get_world_rank(), world_size=tctx.get_world_size(),
        distributed=torch.distributed.is_available() and torch.distributed.is_initialized(),
        checkpoint=ray.train.get_checkpoint(), report=_ray_report)
    cfg = config["cfg"]
    import ray

    shared = {k: ray.get(ref) for k, ref in config["shared"].items()}
    return run_worker(cfg, config["make_task"](cfg, **shared), config["ds_config"], ctx)


def prepare_ds_config(cfg) -> dict | None:
    """Build and validate the DeepSpeed dict on the driver, before any worker starts; refuse to
    resume from a checkpoint this setup cannot load (a worker error would be retried in vain)."""
    world = max(cfg.num_workers, 1)
    ds = build_ds_config(cfg, world)
    if ds is not None and cfg.num_workers > 0:
        validate_ds_config(ds, world)
    if "://" not in cfg.storage_path:
        latest = latest_local_checkpoint(Path(cfg.storage_path) / cfg.run_name)
        if latest is not None:
            engine = "torch" if cfg.num_workers == 0 else ("deepspeed" if ds is not None else "ddp")
            check_resumable(read_train_state(latest), engine, world, str(latest))
    return ds


def fit(cfg, make_task: Callable[..., Task], shared: dict[str, Any] | None = None) -> dict:
    """Run ``make_task(cfg, **shared)`` on ``cfg.num_workers`` Ray Train workers; returns a summary.

    ``shared`` values (e.g. rows tokenized on the driver) go through the object store once,
    instead of being copied into every worker's config.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from knowlm_ray.runtime import init_ray, worker_env

    ds_config = prepare_ds_config(cfg)
    if cfg.num_workers == 0:
        print(f"[{cfg.run_name}] local mode (num_workers: 0): one process, plain torch, no DeepSpeed; "
              "checkpoints are not kept, so a re-run starts over", flush=True)
    ray = init_ray()
    refs = {k: ray.put(v) for k, v in (shared or {}).items()}
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg, "make_task": make_task, "ds_config": ds_config, "shared": refs},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()}),
    )
    result = trainer.fit()
    if getattr(result, "error", None):
        raise result.error
    return summarize(cfg, result.return_value or {}, result.checkpoint, time.perf_counter() - t0)


def summarize(cfg, final: dict, checkpoint, seconds: float) -> dict:
    start = final.get("start_step", 0)
    rows = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if r.get("step", 0) > start]
    tps = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
    return {
        "run_name": cfg.run_name,
        "output_dir": final.get("output_dir", cfg.output_dir),
        "step": final.get("step"),
        "resumed_from_step": final.get("start_step", 0),
        "steps_this_run": len(rows),
        "first_loss": rows[0]["loss"] if rows else None,
        "last_loss": rows[-1]["loss"] if rows else None,
        "tokens_per_s": round(sum(tps) / len(tps), 1) if tps else None,
        **{k: final[k] for k in ("init_s", "train_s", "export_s") if k in final},
        # Local mode (num_workers 0) keeps no checkpoint on disk: nothing to resume from.
        "checkpoint": checkpoint.path if checkpoint is not None and cfg.num_workers > 0 else None,
        "seconds": round(seconds, 1),
    }
