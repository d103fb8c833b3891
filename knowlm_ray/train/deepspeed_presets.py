"""DeepSpeed presets as plain dicts, filled from the job config and validated before workers start.

``cfg.deepspeed`` is one of:
- a preset name: ``zero3`` | ``zero2`` | ``ddp`` (``ddp`` = no DeepSpeed, torch DDP via Ray Train);
- a dict with a ``preset`` key: that preset deep-merged with the rest of the dict
  (e.g. ``{preset: zero3, zero_optimization: {stage3_param_persistence_threshold: 0}}``);
- any other dict: a complete DeepSpeed config (``"auto"`` values are filled in as HF Trainer does).

Then the config's switches are applied (``build_ds_config``):

    precision: fp16        KnowLM's dynamic loss scaling block (V100 has no bf16)
    precision: bf16        bf16 block (A100/H100; also runs on CPU)
    offload_optimizer      ZeRO-Offload of optimizer states and step to the CPU
    offload_param          ZeRO-3 parameter offload to the CPU
    max_grad_norm          gradient_clipping, always written (0.0 = off; DeepSpeed 0.19 reads a
                           missing key as 1.0); default 1.0, KnowLM set none (see config.py)
    use_gpu                GPU: DeepSpeed's own AdamW (FusedAdam, or DeepSpeedCPUAdam with
                           optimizer offload); CPU: no optimizer block, the engine passes
                           torch.optim.AdamW (DeepSpeed's optimizers JIT-compile ~40 s each on CPU)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from knowlm_ray.errors import UserError

# KnowLM's configs/config.json (pretrain/), zero_optimization block, key for key. The "auto"
# sizes are what HF Trainer fills from the model's hidden size (see fill_auto_from_model).
# max_live / max_reuse 0 release every gathered parameter right after use: the least memory,
# at the price of re-gathering in backward; that is what fit 13B on 32 GB V100s with offload.
KNOWLM_ZERO3: dict[str, Any] = {
    "stage": 3,
    "overlap_comm": True,
    "contiguous_gradients": True,
    "sub_group_size": 0,  # optimizer steps one parameter at a time (bounded CPU-Adam buffers)
    "reduce_bucket_size": "auto",  # hidden^2
    "stage3_prefetch_bucket_size": "auto",  # 0.9 * hidden^2
    "stage3_param_persistence_threshold": "auto",  # 10 * hidden: norms stay whole, matrices partitioned
    "stage3_max_live_parameters": 0,
    "stage3_max_reuse_distance": 0,
    "stage3_gather_16bit_weights_on_model_save": True,  # a whole model on save, not rank shards
}
# KnowLM's fp16 block: dynamic loss scaling starting at 2^32, halved after 2 overflows in a row
# (hysteresis), doubled after 1000 clean steps, never below 1.
KNOWLM_FP16: dict[str, Any] = {
    "enabled": True,
    "auto_cast": False,
    "loss_scale": 0,
    "initial_scale_power": 32,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
OFFLOAD = {"device": "cpu", "pin_memory": True}

PRESETS: dict[str, dict[str, Any] | None] = {
    "zero3": {"zero_optimization": KNOWLM_ZERO3},
    # For comparison (KnowLM measured ZeRO-2 slower than ZeRO-3 across nodes); Chinese-LLaMA-Alpaca's
    # pretraining ran ZeRO-2 with 1e8 buckets.
    "zero2": {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": "auto",
        }
    },
    "ddp": None,
}
COMMON = {"steps_per_print": 10**9, "wall_clock_breakdown": False}


class DeepSpeedConfigError(UserError, ValueError):
    """A DeepSpeed config that cannot work; the message names the numbers or key at fault."""


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_preset(spec: str | dict[str, Any]) -> dict[str, Any] | None:
    """The raw DeepSpeed dict (not yet filled) for ``cfg.deepspeed``; None means plain DDP."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise DeepSpeedConfigError(f"deepspeed: unknown preset {spec!r} (choose from {sorted(PRESETS)})")
        preset = PRESETS[spec]
        return None if preset is None else deep_merge(COMMON, preset)
    spec = dict(spec)
    name = spec.pop("preset", None)
    if name is None:
        return deep_merge(COMMON, spec)
    base = resolve_preset(name)
    if base is None:
        if spec:
            raise DeepSpeedConfigError(f"deepspeed: preset 'ddp' takes no DeepSpeed keys, got {sorted(spec)}")
        return None
    return deep_merge(base, spec)


def _fill(ds: dict[str, Any], key: str, value: Any) -> None:
    if ds.get(key, "auto") == "auto":
        ds[key] = value


def model_hidden_size(model_dir: str | Path) -> int | None:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    hidden = cfg.get("hidden_size") or max(cfg.get("hidden_sizes") or [0]) or None
    return int(hidden) if hidden else None


def fill_auto_from_model(zero: dict[str, Any], hidden: int | None) -> None:
    """HF Trainer's rule for the ZeRO "auto" sizes; without a hidden size DeepSpeed's defaults apply."""
    sizes = {}
    if hidden:
        sizes = {
            "reduce_bucket_size": hidden * hidden,
            "allgather_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
        }
    for key, value in list(zero.items()):
        if value == "auto":
            if key in sizes:
                zero[key] = sizes[key]
            else:
                del zero[key]


def _precision_block(ds: dict[str, Any], precision: str) -> None:
    if precision == "fp16":
        ds["fp16"] = deep_merge(KNOWLM_FP16, ds.get("fp16") if isinstance(ds.get("fp16"), dict) else {})
        ds["fp16"]["enabled"] = True
    elif precision == "bf16":
        ds["bf16"] = deep_merge({"enabled": True}, ds.get("bf16") if isinstance(ds.get("bf16"), dict) else {})
        ds["bf16"]["enabled"] = True
    for key in ("fp16", "bf16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
            ds[key]["enabled"] = False
    if all(isinstance(ds.get(k), dict) and ds[k].get("enabled") for k in ("fp16", "bf16")):
        raise DeepSpeedConfigError("deepspeed: fp16 and bf16 are both enabled; keep one (or set precision)")


def build_ds_config(cfg, world_size: int, use_gpu: bool | None = None) -> dict[str, Any] | None:
    """Fill batch sizes, accumulation, clipping, precision, offload and optimizer from ``cfg``."""
    ds = resolve_preset(cfg.deepspeed)
    precision = getattr(cfg, "precision", "fp32")
    offload_opt, offload_param = getattr(cfg, "offload_optimizer", False), getattr(cfg, "offload_param", False)
    if ds is None:
        if offload_opt or offload_param:
            raise DeepSpeedConfigError(
                "offload_optimizer / offload_param need a DeepSpeed ZeRO preset, not deepspeed: ddp"
            )
        return None
    use_gpu = cfg.use_gpu if use_gpu is None else use_gpu
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.micro_batch_size)
    _fill(ds, "gradient_accumulation_steps", cfg.grad_accum)
    _fill(ds, "train_batch_size", cfg.micro_batch_size * cfg.grad_accum * world_size)
    # Always explicit: DeepSpeed 0.19 fills a missing key with 1.0 (GRADIENT_CLIPPING_DEFAULT), so
    # "no key" (KnowLM's JSON, written for a DeepSpeed whose missing key meant no clipping) would
    # silently clip. 0.0 = off.
    _fill(ds, "gradient_clipping", float(cfg.max_grad_norm))
    _precision_block(ds, precision)

    zero = ds.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    if offload_opt:
        if stage < 1:
            raise DeepSpeedConfigError(f"offload_optimizer needs ZeRO stage 1-3, got stage {stage}")
        zero["offload_optimizer"] = deep_merge(OFFLOAD, zero.get("offload_optimizer") or {})
    if offload_param:
        if stage != 3:
            raise DeepSpeedConfigError(f"offload_param needs ZeRO stage 3, got stage {stage}")
        zero["offload_param"] = deep_merge(OFFLOAD, zero.get("offload_param") or {})
    fill_auto_from_model(zero, model_hidden_size(cfg.model))
    offloaded = any(
        isinstance(zero.get(k), dict) and zero[k].get("device") not in (None, "none")
        for k in ("offload_optimizer", "offload_param")
    )

    if not use_gpu:
        # CPU: no fp16 kernels; no DeepSpeed optimizer (each JIT-compiles for ~40 s): the engine
        # passes torch.optim.AdamW as the client optimizer. Pinned memory needs CUDA.
        if isinstance(ds.get("fp16"), dict) and ds["fp16"].get("enabled"):
            raise DeepSpeedConfigError(
                "deepspeed.fp16 (precision: fp16): not supported on CPU (use_gpu: false); use precision fp32 or bf16"
            )
        ds.pop("fp16", None)
        if isinstance(ds.get("optimizer"), dict):
            raise DeepSpeedConfigError(
                "deepspeed.optimizer: DeepSpeed's optimizers JIT-compile on CPU; remove the "
                "block (the loop uses torch AdamW with use_gpu: false)"
            )
        for key in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(key), dict):
                zero[key]["pin_memory"] = False
        if offloaded:
            # A torch optimizer with ZeRO-Offload is refused unless this flag says it's fine.
            ds.setdefault("zero_force_ds_cpu_optimizer", False)
    elif "optimizer" not in ds:
        # DeepSpeed's AdamW: FusedAdam on the GPU, DeepSpeedCPUAdam when the optimizer is offloaded.
        # The loop sets the learning rate of every param group each step (no scheduler block).
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": getattr(cfg, "eps", 1e-8),
                "weight_decay": cfg.weight_decay,
            },
        }
    return ds


def check_batch_arithmetic(ds: dict[str, Any], world_size: int) -> None:
    tb = ds.get("train_batch_size")
    mb = ds.get("train_micro_batch_size_per_gpu")
    ga = ds.get("gradient_accumulation_steps")
    if None in (tb, mb, ga):
        return  # DeepSpeed derives the missing one; its own check runs in validate_ds_config
    if tb != mb * ga * world_size:
        raise DeepSpeedConfigError(
            "deepspeed: train_batch_size must equal train_micro_batch_size_per_gpu * "
            f"gradient_accumulation_steps * world_size, but {tb} != {mb} * {ga} * {world_size}"
        )


def validate_ds_config(ds: dict[str, Any], world_size: int) -> None:
    """Run DeepSpeed's own validation on the driver (no process group, no GPU needed).

    Without a process group DeepSpeedConfig assumes world size 1, so the batch arithmetic is
    checked here for the real world size and DeepSpeed sees the per-rank equivalent.
    """
    check_batch_arithmetic(ds, world_size)
    from deepspeed.runtime.config import DeepSpeedConfig

    single = copy.deepcopy(ds)
    if isinstance(single.get("train_batch_size"), int):
        single["train_batch_size"] //= world_size
    try:
        DeepSpeedConfig(single)
    except (AssertionError, ValueError, TypeError) as exc:
        raise DeepSpeedConfigError(f"deepspeed config rejected by DeepSpeed: {exc}") from None


def zero_stage(ds: dict[str, Any] | None) -> int:
    return int((ds or {}).get("zero_optimization", {}).get("stage", 0)) if ds else -1
