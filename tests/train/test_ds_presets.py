"""DeepSpeed presets: filled from the job config, validated by DeepSpeed itself before workers start."""

from __future__ import annotations

import pytest

from knowlm_ray.config import FinetuneConfig, PretrainConfig
from knowlm_ray.train.deepspeed_presets import (
    DeepSpeedConfigError,
    build_ds_config,
    resolve_preset,
    validate_ds_config,
    zero_stage,
)


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
    ds = build_ds_config(
        cfg(deepspeed={"preset": "zero3", "zero_optimization": {"stage3_param_persistence_threshold": 0}}), 2
    )
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert ds["zero_optimization"]["overlap_comm"] is True  # the rest of the preset is kept
    full = build_ds_config(
        cfg(
            deepspeed={"zero_optimization": {"stage": 1}, "train_batch_size": "auto", "gradient_clipping": "auto"},
            micro_batch_size=2,
        ),
        4,
    )
    assert full["train_batch_size"] == 8 and full["gradient_clipping"] == 1.0
    validate_ds_config(full, 4)
    no_clip = build_ds_config(cfg(deepspeed={"gradient_clipping": "auto"}, max_grad_norm=0), 1)
    assert no_clip["gradient_clipping"] == 0.0  # explicit: DeepSpeed 0.19 reads a missing key as 1.0


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


def test_zero3_preset_is_knowlms_block_with_auto_sizes_from_the_model(tiny_model):
    from knowlm_ray.train.deepspeed_presets import KNOWLM_ZERO3

    zero = build_ds_config(cfg(deepspeed="zero3").model_copy(update={"model": str(tiny_model)}), 2)["zero_optimization"]
    hidden = 64  # the tiny model; HF Trainer's "auto" rule
    assert zero["reduce_bucket_size"] == hidden * hidden
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * hidden * hidden)
    assert zero["stage3_param_persistence_threshold"] == 10 * hidden
    for key in (
        "stage",
        "overlap_comm",
        "contiguous_gradients",
        "sub_group_size",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
        "stage3_gather_16bit_weights_on_model_save",
    ):
        assert zero[key] == KNOWLM_ZERO3[key], key


@pytest.mark.parametrize("preset", ["zero3", "zero2"])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("offload", [False, True])
def test_gpu_configs_validate_without_a_gpu(preset, precision, offload):
    from knowlm_ray.train.deepspeed_presets import KNOWLM_FP16

    c = cfg(
        deepspeed=preset,
        use_gpu=True,
        precision=precision,
        offload_optimizer=offload,
        offload_param=offload and preset == "zero3",
        micro_batch_size=2,
        grad_accum=2,
    )
    ds = build_ds_config(c, 8)
    validate_ds_config(ds, 8)
    assert ds["train_batch_size"] == 32
    # GPU: DeepSpeed's own AdamW (FusedAdam; DeepSpeedCPUAdam when the optimizer is offloaded)
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": c.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
    }
    assert ds.get("fp16", {}).get("enabled", False) == (precision == "fp16")
    assert ds.get("bf16", {}).get("enabled", False) == (precision == "bf16")
    if precision == "fp16":
        assert ds["fp16"] == KNOWLM_FP16  # dynamic loss scale: 0, 2^32, window 1000, hysteresis 2, min 1
    zero = ds["zero_optimization"]
    assert ("offload_optimizer" in zero) == offload
    if offload:
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "zero_force_ds_cpu_optimizer" not in ds


def test_switches_that_cannot_work_are_refused_before_any_worker():
    with pytest.raises(DeepSpeedConfigError, match="offload_param needs ZeRO stage 3, got stage 2"):
        build_ds_config(cfg(deepspeed="zero2", use_gpu=True, offload_param=True), 2)
    with pytest.raises(DeepSpeedConfigError, match="need a DeepSpeed ZeRO preset"):
        build_ds_config(cfg(deepspeed="ddp", offload_optimizer=True), 2)
    with pytest.raises(DeepSpeedConfigError, match="precision: fp16.*not supported on CPU"):
        build_ds_config(cfg(precision="fp16"), 2)
    with pytest.raises(DeepSpeedConfigError, match="JIT-compile on CPU"):
        build_ds_config(cfg(deepspeed={"preset": "zero3", "optimizer": {"type": "AdamW"}}), 2)
    with pytest.raises(DeepSpeedConfigError, match="both enabled"):
        build_ds_config(
            cfg(use_gpu=True, precision="bf16", deepspeed={"preset": "zero3", "fp16": {"enabled": True}}), 2
        )


def test_cpu_offload_and_bf16_use_the_torch_optimizer():
    ds = build_ds_config(cfg(precision="bf16", offload_optimizer=True, offload_param=True), 2)
    validate_ds_config(ds, 2)
    assert ds["bf16"] == {"enabled": True} and "optimizer" not in ds
    assert ds["zero_force_ds_cpu_optimizer"] is False  # torch AdamW with ZeRO-Offload, on purpose
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": False}  # no CUDA to pin
