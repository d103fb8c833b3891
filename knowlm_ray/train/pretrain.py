"""Causal-LM pretraining of an HF model on Arrow corpus shards, on Ray Train (DeepSpeed by default).

Library entry point of ``jobs/pretrain.py`` and ``knowlm pretrain``: ``run(PretrainConfig) -> dict``.
"""
from __future__ import annotations

import json
from pathlib import Path

from knowlm_ray.config import ConfigError, PretrainConfig
from knowlm_ray.train.data import DataError, ShardRows, find_shards
from knowlm_ray.train.checkpoint import IncompatibleCheckpoint
from knowlm_ray.train.deepspeed_presets import DeepSpeedConfigError
from knowlm_ray.train.export import write_full_model
from knowlm_ray.train.loop import Task, fit, prepare_ds_config


def pad_id_of(model_dir: str | Path) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    pad = cfg.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0  # masked by attention_mask and labels anyway


def load_causal_lm(model_dir: str | Path, gradient_checkpointing: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights; DeepSpeed casts to fp16/bf16 itself when its config asks for it.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def make_task(cfg: PretrainConfig) -> Task:
    def export(engine, rank: int):
        state_dict = engine.full_state_dict()  # collective under ZeRO-3: whole tensors on rank 0
        if rank == 0:
            if cfg.gradient_checkpointing:
                engine.module.config.use_cache = True  # training switched it off; inference wants it
            return write_full_model(engine.module, state_dict, cfg.model, cfg.output_dir)
        return None

    return Task(build_model=lambda: load_causal_lm(cfg.model, cfg.gradient_checkpointing),
                load_rows=lambda: ShardRows(find_shards(cfg.data)),
                export=export, seq_len=cfg.seq_len, pad_id=pad_id_of(cfg.model))


def check_inputs(cfg: PretrainConfig) -> None:
    """Fail on the driver, with the path in the message, before any worker starts."""
    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"model: {cfg.model} is not a Hugging Face model dir (no config.json)")
    try:
        prepare_ds_config(cfg)
        ShardRows(find_shards(cfg.data))  # opens every shard: a bad file fails here, not in a worker
    except (DataError, DeepSpeedConfigError, IncompatibleCheckpoint) as exc:
        raise ConfigError(str(exc)) from None


def run(cfg: PretrainConfig) -> dict:
    check_inputs(cfg)
    return fit(cfg, make_task)
