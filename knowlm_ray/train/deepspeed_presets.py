"""DeepSpeed presets as plain dicts, filled from the job config and validated before workers start.

``cfg.deepspeed`` is one of:
- a preset name: ``zero3`` | ``zero2`` | ``ddp`` (``ddp`` = no DeepSpeed, torch DDP via Ray Train);
- a dict with a ``preset`` key: that preset deep-merged with the rest of the dict
  (e.g. ``{preset: zero3, zero_optimization: {stage3_param_persistence_threshold: 0}}``);
- any other dict: a complete DeepSpeed config (``"auto"`` batch/clipping values are filled in).
"""
from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any] | None] = {
    # KnowLM's configs/config.json, minus what the CPU profile cannot use (offload + fp16 need a GPU
    # and a DeepSpeed optimizer); the 16-bit gather on save is what makes the exported model whole.
    "zero3": {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    },
    "zero2": {
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    },
    "ddp": None,
}
COMMON = {"steps_per_print": 10**9, "wall_clock_breakdown": False}


class DeepSpeedConfigError(ValueError):
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


def build_ds_config(cfg, world_size: int, use_gpu: bool | None = None) -> dict[str, Any] | None:
    """Fill batch sizes, accumulation, clipping and precision from ``cfg`` (a TrainConfig)."""
    ds = resolve_preset(cfg.deepspeed)
    if ds is None:
        return None
    use_gpu = cfg.use_gpu if use_gpu is None else use_gpu
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.micro_batch_size)
    _fill(ds, "gradient_accumulation_steps", cfg.grad_accum)
    _fill(ds, "train_batch_size", cfg.micro_batch_size * cfg.grad_accum * world_size)
    if cfg.max_grad_norm > 0:
        _fill(ds, "gradient_clipping", cfg.max_grad_norm)
    elif ds.get("gradient_clipping") == "auto":
        del ds["gradient_clipping"]
    if not use_gpu:
        # CPU: fp32 only (no fp16 kernels), and no DeepSpeed optimizer (each JIT-compiles for ~40 s):
        # the loop passes torch.optim.AdamW as the client optimizer.
        for key in ("fp16", "bf16"):
            if isinstance(ds.get(key), dict) and ds[key].get("enabled") not in (False, "auto"):
                raise DeepSpeedConfigError(f"deepspeed.{key}: not supported on CPU (use_gpu: false); remove it")
            ds.pop(key, None)
        zero = ds.get("zero_optimization", {})
        for key in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(key), dict) and zero[key].get("device") not in (None, "none"):
                # A torch optimizer with ZeRO-Offload is refused unless this flag says it's fine.
                ds.setdefault("zero_force_ds_cpu_optimizer", False)
    else:
        for key in ("fp16", "bf16"):
            if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
                ds[key]["enabled"] = False
    zero = ds.get("zero_optimization", {})
    for key, value in list(zero.items()):
        if value == "auto":  # HF Trainer sizes these from the hidden size; DeepSpeed defaults are fine
            del zero[key]
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
            f"gradient_accumulation_steps * world_size, but {tb} != {mb} * {ga} * {world_size}")


def validate_ds_config(ds: dict[str, Any], world_size: int) -> None:
    """Run DeepSpeed's own validation on the driver (no process group needed).

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
    except (AssertionError, ValueError) as exc:
        raise DeepSpeedConfigError(f"deepspeed config rejected by DeepSpeed: {exc}") from None


def zero_stage(ds: dict[str, Any] | None) -> int:
    return int((ds or {}).get("zero_optimization", {}).get("stage", 0)) if ds else -1
