"""jobs/configs/zhixi-13b-v100.yaml is KnowLM's 13B recipe exactly, and DeepSpeed accepts it (no GPU needed)."""

from __future__ import annotations

import pytest

from knowlm_ray.config import PretrainConfig, load_config
from knowlm_ray.train.deepspeed_presets import (
    KNOWLM_FP16,
    KNOWLM_ZERO3,
    DeepSpeedConfigError,
    build_ds_config,
    validate_ds_config,
)
from knowlm_ray.train.schedule import lr_at


@pytest.fixture(scope="module")
def zhixi(repo_root) -> PretrainConfig:
    return load_config(PretrainConfig, repo_root / "jobs" / "configs" / "zhixi-13b-v100.yaml")


def test_recipe_values(zhixi):
    c = zhixi
    assert (c.num_workers, c.use_gpu) == (24, True)  # 3 nodes x 8 V100
    assert (c.micro_batch_size, c.grad_accum, c.global_batch) == (20, 3, 1440)
    assert (c.lr, tuple(c.betas), c.eps, c.weight_decay) == (1.5e-5, (0.9, 0.95), 1e-8, 0.1)
    assert (c.warmup_steps, c.min_lr_ratio, c.num_epochs, c.max_steps) == (300, 0.0, 1, None)
    assert (c.precision, c.offload_optimizer, c.offload_param) == ("fp16", True, True)
    assert c.gradient_checkpointing and c.seq_len == 1024 and c.save_every == 100 and c.keep_checkpoints == 1
    assert c.deepspeed == "zero3" and c.max_grad_norm == 0 and c.max_failures >= 1
    assert lr_at(300, c.lr, c.warmup_steps, 1000) == pytest.approx(1.5e-5)  # warmup peak, then cosine


def test_deepspeed_config_is_knowlms_and_validates(zhixi):
    ds = build_ds_config(zhixi, zhixi.world_size)
    validate_ds_config(ds, zhixi.world_size)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        1440,
        20,
        3,
    )
    zero = ds["zero_optimization"]
    for key, value in KNOWLM_ZERO3.items():
        if value != "auto":
            assert zero[key] == value, key
    assert zero["offload_optimizer"] == zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert ds["fp16"] == KNOWLM_FP16 and "bf16" not in ds
    assert ds["optimizer"]["type"] == "AdamW"  # -> DeepSpeedCPUAdam with the offloaded optimizer
    assert ds["optimizer"]["params"] == {"lr": 1.5e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
    assert ds["gradient_clipping"] == 0.0  # KnowLM: unclipped (explicit: DeepSpeed 0.19 defaults to 1.0)


def test_batch_arithmetic_errors_name_the_numbers(zhixi):
    bad = zhixi.model_copy(update={"deepspeed": {"preset": "zero3", "train_batch_size": 1000}})
    with pytest.raises(DeepSpeedConfigError, match=r"1000 != 20 \* 3 \* 24"):
        validate_ds_config(build_ds_config(bad, 24), 24)
