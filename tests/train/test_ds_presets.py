"""DeepSpeed presets: filled from the job config, validated by DeepSpeed itself before workers start."""
from __future__ import annotations

import pytest

from knowlm_ray.config import FinetuneConfig, PretrainConfig
from knowlm_ray.train.deepspeed_presets import (DeepSpeedConfigError, build_ds_config, resolve_preset,
                                                validate_ds_config, zero_stage)


def cfg(**kw):
    return PretrainConfig(model="m", data="d", **kw)


def test_zero3_preset_is_filled_from_config():
    ds = build_ds_config(cfg(micro_batch_size=4, grad_accum=3, max_grad_norm=0.5), world_size=2)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["overlap_comm"] and zero["contiguous_gradients"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 24
    assert ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "fp16" not in ds  # CPU: fp32 + torch AdamW as client optimizer
    validate_ds_config(ds, world_size=2)


def test_zero2_and_ddp_presets():
    assert zero_stage(build_ds_config(cfg(deepspeed="zero2"), 2)) == 2
    assert build_ds_config(cfg(deepspeed="ddp"), 2) is None
    assert FinetuneConfig(model="m", data="d").deepspeed == "ddp"  # LoRA default: plain DDP


def test_preset_with_overrides_and_full_dict():
    ds = build_ds_config(cfg(deepspeed={"preset": "zero3",
                                        "zero_optimization": {"stage3_param_persistence_threshold": 0}}), 2)
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert ds["zero_optimization"]["overlap_comm"] is True  # the rest of the preset is kept
    full = build_ds_config(cfg(deepspeed={"zero_optimization": {"stage": 1}, "train_batch_size": "auto",
                                          "gradient_clipping": "auto"}, micro_batch_size=2), 4)
    assert full["train_batch_size"] == 8 and full["gradient_clipping"] == 1.0
    validate_ds_config(full, 4)
    no_clip = build_ds_config(cfg(deepspeed={"gradient_clipping": "auto"}, max_grad_norm=0), 1)
    assert "gradient_clipping" not in no_clip


def test_bad_batch_arithmetic_names_the_numbers():
    ds = build_ds_config(cfg(deepspeed={"preset": "zero3", "train_batch_size": 12}, micro_batch_size=4), 2)
    with pytest.raises(DeepSpeedConfigError, match=r"12 != 4 \* 1 \* 2"):
        validate_ds_config(ds, world_size=2)


def test_deepspeed_rejects_bad_keys_and_unknown_presets():
    ds = build_ds_config(cfg(deepspeed={"preset": "zero3", "zero_optimization": {"stage": 7}}), 2)
    with pytest.raises(DeepSpeedConfigError, match="rejected by DeepSpeed"):
        validate_ds_config(ds, 2)
    with pytest.raises(DeepSpeedConfigError, match="unknown preset 'zero4'"):
        resolve_preset("zero4")
    with pytest.raises(DeepSpeedConfigError, match="not supported on CPU"):
        build_ds_config(cfg(deepspeed={"preset": "zero3", "fp16": {"enabled": True}}), 2)
