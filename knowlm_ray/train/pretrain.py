"""Causal-LM pretraining of an HF model on Arrow corpus shards, on Ray Train (DeepSpeed by default).

Library entry point of ``jobs/pretrain.py`` and ``knowlm pretrain``: ``run(PretrainConfig) -> dict``.

Data: the corpus shards through the memory-mapped reader; each worker takes its slice of every
global batch from a deterministic, resumable sampler; sources are mixed by ``data_mix`` or the
manifest's per-source weights; packed rows (``doc_starts``, or BOS tokens) restart positions and
attention at every document.
"""

from __future__ import annotations

import json
from pathlib import Path

from knowlm_ray.config import ConfigError, PretrainConfig
from knowlm_ray.train.checkpoint import IncompatibleCheckpoint
from knowlm_ray.train.data import (
    DataError,
    MixedSampler,
    RankSampler,
    ShardRows,
    find_shards,
    manifest_source_weights,
    mixing_probs,
    read_manifest,
)
from knowlm_ray.train.deepspeed_presets import DeepSpeedConfigError
from knowlm_ray.train.export import write_full_model
from knowlm_ray.train.loop import Task, fit, prepare_ds_config, resolve_max_steps


def _model_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def pad_id_of(model_dir: str | Path) -> int:
    pad = _model_config(model_dir).get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0  # masked by attention_mask and labels anyway


def bos_id_of(model_dir: str | Path) -> int | None:
    bos = _model_config(model_dir).get("bos_token_id")
    return int(bos) if isinstance(bos, int) else None


def load_causal_lm(model_dir: str | Path, gradient_checkpointing: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights; DeepSpeed casts to fp16/bf16 itself when its config asks for it.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if gradient_checkpointing:
        # Recompute each layer's activations in backward: memory ~ one layer instead of all
        # (KnowLM: on for 13B at seq 1024). use_cache must be off with it.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def freeze_except(model, modules: list[str]):
    """Only parameters inside a module named in ``modules`` (a path component of the parameter
    name, e.g. ``embed_tokens`` or ``lm_head``) keep requires_grad."""
    if not modules:
        return model
    wanted = set(modules)
    hit = set()
    for name, p in model.named_parameters():
        parts = set(name.split(".")[:-1])
        p.requires_grad = bool(parts & wanted)
        hit |= parts & wanted
    missing = sorted(wanted - hit)
    if missing:
        raise ValueError(f"trainable_modules: no parameters under {missing} in {type(model).__name__}")
    return model


def mixing_for(cfg: PretrainConfig, rows: ShardRows) -> dict[str, float] | None:
    """Per-source sampling shares for this config and data, or None (natural order)."""
    weights = manifest_source_weights(read_manifest(cfg.data))
    if cfg.data_mix is None and len(set(weights.values())) <= 1:
        return None  # nothing to mix: don't read the source column
    names, codes = rows.sources()
    counts = {n: int((codes == k).sum()) for k, n in enumerate(names)}
    return mixing_probs(counts, cfg.data_mix, weights)


def make_sampler_factory(cfg: PretrainConfig):
    def make_sampler(rows: ShardRows, rank: int, world_size: int, state: dict | None):
        probs = mixing_for(cfg, rows)
        if probs is None:
            return RankSampler(len(rows), cfg.seed, rank, world_size, cfg.micro_batch_size, state)
        import numpy as np

        names, codes = rows.sources()
        groups = {n: np.flatnonzero(codes == k) for k, n in enumerate(names)}
        return MixedSampler(groups, probs, cfg.seed, rank, world_size, cfg.micro_batch_size, state)

    return make_sampler


def make_task(cfg: PretrainConfig) -> Task:
    def export(engine, rank: int):
        state_dict = engine.full_state_dict()  # collective under ZeRO-3: whole tensors on rank 0
        if rank == 0:
            if cfg.gradient_checkpointing:
                engine.module.config.use_cache = True  # training switched it off; inference wants it
            return write_full_model(engine.module, state_dict, cfg.model, cfg.output_dir)
        return None

    return Task(
        build_model=lambda: freeze_except(load_causal_lm(cfg.model, cfg.gradient_checkpointing), cfg.trainable_modules),
        load_rows=lambda: ShardRows(find_shards(cfg.data)),
        export=export,
        seq_len=cfg.seq_len,
        pad_id=pad_id_of(cfg.model),
        make_sampler=make_sampler_factory(cfg),
        packed=cfg.packed_attention,
        bos_id=bos_id_of(cfg.model),
    )


def check_inputs(cfg: PretrainConfig) -> None:
    """Fail on the driver, with the path in the message, before any worker starts; resolve
    ``max_steps`` from ``num_epochs``."""
    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"model: {cfg.model} is not a Hugging Face model dir (no config.json)")
    try:
        prepare_ds_config(cfg)
        rows = ShardRows(find_shards(cfg.data))  # opens every shard: a bad file fails here, not in a worker
        mixing_for(cfg, rows)
        resolve_max_steps(cfg, len(rows))
    except (DataError, DeepSpeedConfigError, IncompatibleCheckpoint) as exc:
        raise ConfigError(str(exc)) from None


def run(cfg: PretrainConfig) -> dict:
    check_inputs(cfg)
    return fit(cfg, make_task)
