"""The one training loop behind pretraining and LoRA, and its Ray Train V2 launcher.

``run_worker`` is the plain-Python core (one rank: build, resume, train, checkpoint, export);
``fit`` wraps it in a ``TorchTrainer``. What differs between jobs is a ``Task``: how to build the
model, where rows come from, and what the final export is.

Resume: Ray Train V2 hands the newest checkpoint of ``storage_path/run_name`` back through
``ray.train.get_checkpoint()`` when the same command runs again (or after a worker failure);
the loop loads it, cuts metrics.jsonl back to its step and continues at the next step.

Exact resume: everything a step depends on is either in the checkpoint (weights, optimizer
state incl. AdamW's step count, sampler position) or a pure function of the step (learning rate,
the RNG seed for dropout, reseeded before every step). So a run killed at any point and resumed
from step k computes the same losses for steps k+1.. as a run that never stopped (on CPU with
gloo; tests/train/test_pretrain_fit.py proves it with a SIGKILLed worker).

Resume on another number of workers (a node lost for good): DeepSpeed checkpoints go through
DeepSpeed's universal format (``checkpoint.convert_to_universal``, once per node, then
``load_universal``), which re-partitions weights and Adam state exactly; DDP/torch checkpoints
hold whole weights and load as they are. The sampler's position is global, so each rank takes
its slice of the new global batch (micro x accum x workers; ``keep_global_batch`` keeps the old
one by changing accumulation). tests/train/test_resume_world_size.py proves it.

Checkpoints are written every ``save_every`` steps, and also when ``save_every_minutes`` have
passed since the last one. Rank 0's clock decides; the decision rides on the per-step loss
all-reduce, so every rank enters the (collective) save at the same step at no extra cost.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from knowlm_ray.atomic import DiskFullError, disk_full_cause
from knowlm_ray.train.checkpoint import (
    IncompatibleCheckpoint,
    TrainState,
    check_resumable,
    check_same_shapes,
    convert_to_universal,
    latest_local_checkpoint,
    needs_universal,
    read_train_state,
    step_tag,
    write_train_state,
    writing_checkpoint,
    zero_param_shapes,
)
from knowlm_ray.train.data import BatchStream, RankSampler, Rows, batch_tokens
from knowlm_ray.train.deepspeed_presets import build_ds_config, validate_ds_config, zero_stage
from knowlm_ray.train.engine import DeepSpeedEngine, TorchEngine, use_deepspeed
from knowlm_ray.train.jit_locks import clear_stale_locks
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
    # (rows, rank, world_size, saved state or None) -> a sampler; None: RankSampler (natural order)
    make_sampler: Callable[[Rows, int, int, dict | None], Any] | None = None
    load_val_rows: Callable[[], Rows | None] | None = None  # held-out rows for eval_every
    packed: str | None = None  # "block" / "positions": rows may hold several documents
    bos_id: int | None = None  # document starts of packed rows without a doc_starts column


@dataclass
class WorkerContext:
    """Where a rank runs; built from ``ray.train.get_context()`` or by hand in tests."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this node (one universal conversion per node)
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
        # from_pretrained returns eval mode: dropout and gradient checkpointing need train mode
        return TorchEngine(model_builder().train(), cfg, ctx.distributed), None
    import deepspeed

    # Ray already made the process group; DeepSpeed must adopt it or it sees world size 1.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    hook = None
    if zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hook = HfDeepSpeedConfig(ds_config)  # a weakref inside transformers: keep it alive
    return DeepSpeedEngine(model_builder().train(), cfg, ds_config), hook


def _saved_state(ctx: WorkerContext) -> TrainState | None:
    if ctx.checkpoint is None:
        return None
    with ctx.checkpoint.as_directory() as d:
        return read_train_state(d)


def _barrier(ctx: WorkerContext) -> None:
    if ctx.distributed:
        torch.distributed.barrier()


def _load_universal(engine, d: str, state: TrainState, ctx: WorkerContext, run_name: str) -> None:
    """Convert the ZeRO shards of ``d`` to DeepSpeed's universal format in a node-local dir (local
    rank 0 of each node; the others wait), load it on every rank, then delete it. It needs room
    for the fp32 weights + two Adam moments: point TMPDIR (worker env) at a big local disk."""
    check_same_shapes(zero_param_shapes(d, state.tag), engine.param_shapes(), d)
    out = Path(tempfile.gettempdir(), f"knowlm-universal-{os.getuid()}", f"{run_name}-{state.tag}-w{state.world_size}")
    if ctx.local_rank == 0:
        shutil.rmtree(out, ignore_errors=True)  # a half-written one from a crashed attempt
        t0 = time.perf_counter()
        convert_to_universal(d, state.tag, out)
        print(
            f"[{run_name}] converted the step-{state.step} checkpoint ({state.world_size} worker(s)) to "
            f"DeepSpeed's universal format in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    _barrier(ctx)
    try:
        engine.load(str(out), state.tag)
    finally:
        _barrier(ctx)
        if ctx.local_rank == 0:
            shutil.rmtree(out, ignore_errors=True)


def _restore(engine, ctx: WorkerContext, universal: bool, run_name: str) -> TrainState:
    if ctx.checkpoint is None:
        return TrainState()
    with ctx.checkpoint.as_directory() as d:
        state = read_train_state(d)
        if universal:
            _load_universal(engine, d, state, ctx, run_name)
        else:
            engine.load(d, state.tag)
    return state


def _clear_jit_locks(run_name: str, ctx: WorkerContext | None = None) -> None:
    """A build lock left by a process killed while compiling a DeepSpeed op would hang every rank
    in FileBaton.wait: one process per node (local rank 0) clears it while the others wait."""
    if ctx is None or ctx.local_rank == 0:
        for line in clear_stale_locks():
            print(f"[{run_name}] {line}", flush=True)
    if ctx is not None:
        _barrier(ctx)


def _engine_name(ds_config: dict | None, ctx: WorkerContext) -> str:
    return "deepspeed" if use_deepspeed(ds_config, ctx.distributed) else ("ddp" if ctx.distributed else "torch")


def _announce_resize(cfg, state: TrainState, ctx: WorkerContext) -> None:
    old = f", global batch {state.global_batch}" if state.global_batch else ""
    print(
        f"[{cfg.run_name}] resuming the step-{state.step} checkpoint of {state.world_size} worker(s){old} on "
        f"{ctx.world_size} worker(s): global batch now {cfg.global_batch} = micro {cfg.micro_batch_size} x "
        f"accum {cfg.grad_accum} x {ctx.world_size} worker(s); weights and optimizer state restored exactly, "
        f"the sample stream continues where it stopped (nothing repeated or skipped)",
        flush=True,
    )


def _save(engine, state: TrainState, metrics: dict, ctx: WorkerContext) -> None:
    with tempfile.TemporaryDirectory(prefix="knowlm-ckpt-") as d, writing_checkpoint(d, state.step):
        engine.save(d, state.tag, client_state={"step": state.step, "sampler": state.sampler})
        if ctx.rank == 0:
            write_train_state(d, state)
        wrote = any(Path(d).iterdir())
        ctx.report(metrics, d if wrote else None)  # synchronous upload: d may go afterwards


def model_flops_per_token(module: torch.nn.Module, seq_len: int) -> float:
    """6 N (forward + backward of every weight) + 12 L H T (attention scores), as in PaLM's MFU."""
    n = sum(int(getattr(p, "ds_numel", p.numel())) for p in module.parameters())
    cfg = getattr(module, "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    hidden = getattr(cfg, "hidden_size", 0) or 0
    return 6.0 * n + 12.0 * layers * hidden * seq_len


def evaluate(engine, stream: BatchStream, val_rows: Rows, micro_batch: int, ctx: WorkerContext) -> float:
    """Token-weighted mean loss over ``val_rows``, each rank a disjoint slice. Every rank runs the
    same number of forwards (ZeRO-3 gathers parameters collectively): a rank past the end repeats
    row 0 with weight 0."""
    n, per = len(val_rows), micro_batch * ctx.world_size
    loss_sum, count = 0.0, 0
    for start in range(0, n, per):
        idx = list(range(min(start + ctx.rank * micro_batch, n), min(start + (ctx.rank + 1) * micro_batch, n)))
        weight = 1 if idx else 0
        batch = BatchStream(
            val_rows, None, stream.seq_len, stream.pad_id, stream.packed, stream.bos_id
        ).collate_indices(idx or [0])
        s, c = engine.evaluate(batch)
        loss_sum, count = loss_sum + weight * s, count + weight * c
    total, tokens = _all_reduce_sum([loss_sum, count], ctx, engine.device)
    return total / max(tokens, 1)


def run_worker(cfg, task: Task, ds_config: dict | None, ctx: WorkerContext, clock=time.monotonic) -> dict:
    """Train one rank to ``cfg.max_steps`` (resuming if a checkpoint is given), then export."""
    if cfg.max_steps is None:
        raise ValueError("max_steps is not resolved (num_epochs needs the dataset size: see resolve_max_steps)")
    _quiet_worker()
    t_init = time.perf_counter()
    torch.manual_seed(cfg.seed)  # identical initial weights (LoRA matrices) on every rank
    saved = _saved_state(ctx)
    engine_name = _engine_name(ds_config, ctx)
    if engine_name == "deepspeed":
        _clear_jit_locks(cfg.run_name, ctx)
    universal = saved is not None and needs_universal(saved, engine_name, ctx.world_size)
    if saved is not None:
        check_resumable(saved, engine_name, ctx.world_size, zero_stage=zero_stage(ds_config) if ds_config else None)
    if universal:
        ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    engine, _hook = _make_engine(task.build_model, cfg, ds_config, ctx)
    state = _restore(engine, ctx, universal, cfg.run_name)
    if state.step and state.world_size != ctx.world_size and ctx.rank == 0:
        _announce_resize(cfg, state, ctx)
    start_step = state.step
    rows = task.load_rows()
    saved_sampler = state.sampler if state.step else None
    if task.make_sampler is not None:
        sampler = task.make_sampler(rows, ctx.rank, ctx.world_size, saved_sampler)
    else:
        sampler = RankSampler(len(rows), cfg.seed, ctx.rank, ctx.world_size, cfg.micro_batch_size, saved_sampler)
    stream = BatchStream(rows, sampler, task.seq_len, task.pad_id, task.packed, task.bos_id)
    eval_every = getattr(cfg, "eval_every", 0)
    val_rows = task.load_val_rows() if task.load_val_rows is not None and eval_every else None
    log = MetricsLog(Path(cfg.output_dir) / "metrics.jsonl", start_step) if ctx.rank == 0 else None
    flops_per_token = model_flops_per_token(engine.module, task.seq_len)
    peak = cfg.device_peak_tflops * 1e12 * ctx.world_size
    loss = val_loss = None
    t_start = time.perf_counter()
    last_save = clock()
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
                tokens += batch_tokens(batch)
            # Rank 0's clock decides a time-based save for everyone (summed flag, same all-reduce).
            due = float(
                ctx.rank == 0 and cfg.save_every_minutes > 0 and clock() - last_save >= cfg.save_every_minutes * 60
            )
            total_loss, total_tokens, due = _all_reduce_sum([loss_sum, tokens, due], ctx, engine.device)
            loss = total_loss / (cfg.grad_accum * ctx.world_size)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step} (lr {lr:.3g}); stopping")
            dt = max(time.perf_counter() - t0, 1e-9)
            tps = total_tokens / dt
            extra = {
                "samples_per_s": round(cfg.micro_batch_size * cfg.grad_accum * ctx.world_size / dt, 2),
                **{k: round(v, 6) for k, v in engine.step_stats().items()},
            }
            if peak > 0:
                extra["mfu"] = round(flops_per_token * tps / peak, 4)
            if log is not None:
                log.log(step, loss, lr, tps, **extra)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    print(
                        f"[{cfg.run_name}] step {step}/{cfg.max_steps} loss {loss:.4f} lr {lr:.3g} {tps:,.0f} tok/s",
                        flush=True,
                    )
            if val_rows is not None and (step % eval_every == 0 or step == cfg.max_steps):
                val_loss = evaluate(engine, stream, val_rows, cfg.micro_batch_size, ctx)
                if log is not None:
                    log.log_eval(step, val_loss)
                    print(f"[{cfg.run_name}] step {step} val_loss {val_loss:.4f}", flush=True)
            metrics = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tps, "start_step": start_step, **extra}
            if val_loss is not None:
                metrics["val_loss"] = val_loss
            if step % cfg.save_every == 0 or step == cfg.max_steps or due > 0:
                state = TrainState(
                    step=step,
                    tag=step_tag(step),
                    sampler=stream.state_dict(),
                    engine=engine_name,
                    world_size=ctx.world_size,
                    zero_stage=engine.stage if isinstance(engine, DeepSpeedEngine) else 0,
                    global_batch=cfg.micro_batch_size * cfg.grad_accum * ctx.world_size,
                )
                _save(engine, state, metrics, ctx)
                last_save = clock()
            elif step % cfg.log_every == 0:
                ctx.report(metrics, None)  # Ray Train's own metrics (one controller poll each: not every step)
    finally:
        if log is not None:
            log.close()
    t_export = time.perf_counter()
    out = task.export(engine, ctx.rank)
    summary = {
        "step": state.step,
        "start_step": start_step,
        "loss": loss,
        "val_loss": val_loss,
        "init_s": round(t_start - t_init, 2),
        "train_s": round(t_export - t_start, 2),
        "export_s": round(time.perf_counter() - t_export, 2),
        "output_dir": str(out or cfg.output_dir),
        "engine": engine_name,
    }
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
        rank=tctx.get_world_rank(),
        world_size=tctx.get_world_size(),
        local_rank=tctx.get_local_rank(),
        distributed=torch.distributed.is_available() and torch.distributed.is_initialized(),
        checkpoint=ray.train.get_checkpoint(),
        report=_ray_report,
    )
    cfg = config["cfg"]
    import ray

    shared = {k: ray.get(ref) for k, ref in config["shared"].items()}
    return run_worker(cfg, config["make_task"](cfg, **shared), config["ds_config"], ctx)


def resolve_max_steps(cfg, num_rows: int) -> int:
    """``max_steps`` from ``num_epochs`` when it is not given: ceil(epochs x rows / global batch).
    Sets it on ``cfg`` (on the driver, before the config goes to the workers)."""
    if cfg.max_steps is None:
        if num_rows <= 0:
            raise ValueError("num_epochs: no training rows to count epochs over")
        steps = max(1, math.ceil(cfg.num_epochs * num_rows / cfg.global_batch))
        cfg.max_steps = steps
        print(
            f"[{cfg.run_name}] {cfg.num_epochs:g} epoch(s) of {num_rows} rows at {cfg.global_batch} per step "
            f"-> max_steps {steps}",
            flush=True,
        )
    return cfg.max_steps


def prepare_ds_config(cfg) -> dict | None:
    """Build and validate the DeepSpeed dict on the driver, before any worker starts; refuse to
    resume from a checkpoint this setup cannot load (a worker error would be retried in vain)."""
    world = max(cfg.num_workers, 1)
    latest = None
    if "://" not in cfg.storage_path:
        latest = latest_local_checkpoint(Path(cfg.storage_path) / cfg.run_name)
    saved = read_train_state(latest) if latest is not None else None
    if saved is not None and getattr(cfg, "keep_global_batch", False):
        keep_global_batch(cfg, saved, str(latest))
    ds = build_ds_config(cfg, world)
    if ds is not None and cfg.num_workers > 0:
        validate_ds_config(ds, world)
    if saved is not None:
        engine = "torch" if cfg.num_workers == 0 else ("deepspeed" if ds is not None else "ddp")
        check_resumable(saved, engine, world, str(latest), zero_stage=zero_stage(ds) if ds is not None else None)
    return ds


def keep_global_batch(cfg, saved: TrainState, where: str) -> None:
    """Resuming on another number of workers: set ``grad_accum`` so the global batch stays the
    checkpoint's (micro x accum x workers), or say why it cannot."""
    if not saved.global_batch or saved.global_batch == cfg.global_batch:
        return
    per_step = cfg.micro_batch_size * cfg.world_size
    if saved.global_batch % per_step:
        raise IncompatibleCheckpoint(
            f"keep_global_batch: the checkpoint {where} trained with global batch {saved.global_batch} "
            f"({saved.world_size} worker(s)), which is not a multiple of micro_batch_size {cfg.micro_batch_size} "
            f"x {cfg.world_size} worker(s) = {per_step}; change micro_batch_size or num_workers, or set "
            "keep_global_batch: false"
        )
    accum = saved.global_batch // per_step
    print(
        f"[{cfg.run_name}] keep_global_batch: grad_accum {cfg.grad_accum} -> {accum} so the global batch stays "
        f"{saved.global_batch} on {cfg.world_size} worker(s)",
        flush=True,
    )
    cfg.grad_accum = accum


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
        print(
            f"[{cfg.run_name}] local mode (num_workers: 0): one process, plain torch, no DeepSpeed; "
            "checkpoints are not kept, so a re-run starts over",
            flush=True,
        )
    if ds_config is not None and cfg.num_workers > 0:
        _clear_jit_locks(cfg.run_name)  # this node's, before a worker may wait on one
    ray = init_ray()
    refs = {k: ray.put(v) for k, v in (shared or {}).items()}
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg, "make_task": make_task, "ds_config": ds_config, "shared": refs},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    result = trainer.fit()
    if getattr(result, "error", None):
        full = disk_full_cause(result.error)  # a worker's DiskFullError (writing_checkpoint): one line
        raise (full if isinstance(full, DiskFullError) else result.error)
    return summarize(cfg, result.return_value or {}, result.checkpoint, time.perf_counter() - t0)


def summarize(cfg, final: dict, checkpoint, seconds: float) -> dict:
    start = final.get("start_step", 0)
    rows = [
        r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if r.get("step", 0) > start and "loss" in r
    ]  # not the {"step", "val_loss"} lines
    tps = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
    return {
        "run_name": cfg.run_name,
        "output_dir": final.get("output_dir", cfg.output_dir),
        "step": final.get("step"),
        "resumed_from_step": final.get("start_step", 0),
        "steps_this_run": len(rows),
        "first_loss": rows[0]["loss"] if rows else None,
        "last_loss": rows[-1]["loss"] if rows else None,
        **({"val_loss": final["val_loss"]} if final.get("val_loss") is not None else {}),
        "tokens_per_s": round(sum(tps) / len(tps), 1) if tps else None,
        **{k: final[k] for k in ("init_s", "train_s", "export_s") if k in final},
        # Local mode (num_workers 0) keeps no checkpoint on disk: nothing to resume from.
        "checkpoint": checkpoint.path if checkpoint is not None and cfg.num_workers > 0 else None,
        "seconds": round(seconds, 1),
    }
