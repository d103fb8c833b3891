"""LoRA instruction tuning (KnowLM's finetune/lora) on Ray Train: DDP by default, ZeRO-3 supported.

Library entry point of ``jobs/finetune_lora.py`` and ``knowlm finetune-lora``: ``run(FinetuneConfig)``.
The output is a peft adapter dir; merge it offline (``knowlm weights merge-lora``).
"""
from __future__ import annotations

from pathlib import Path

from knowlm_ray.config import ConfigError, FinetuneConfig
from knowlm_ray.instruct.alpaca import RecordError, load_alpaca, tokenize_records
from knowlm_ray.train.data import DataError, RecordRows, Rows, ShardRows, find_shards
from knowlm_ray.train.checkpoint import IncompatibleCheckpoint
from knowlm_ray.train.deepspeed_presets import DeepSpeedConfigError
from knowlm_ray.train.export import write_adapter
from knowlm_ray.train.loop import Task, fit, prepare_ds_config
from knowlm_ray.train.pretrain import load_causal_lm, pad_id_of


def build_lora_model(cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(cfg.model)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules),
                      modules_to_save=list(cfg.lora.modules_to_save) or None, task_type="CAUSAL_LM")
    # Under ZeRO-3 the base is already partitioned here; peft wraps it afterwards (notes §5).
    return get_peft_model(base, lora)


def _has_shards(path: Path) -> bool:
    try:
        return path.is_dir() and bool(find_shards(path))
    except DataError:
        return False


def tokenize_instructions(cfg: FinetuneConfig) -> RecordRows:
    """Alpaca json/jsonl (file or dir) -> prompt-masked token rows (KnowLM's finetune.py)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model)
    records = load_alpaca(cfg.data)
    rows = tokenize_records(tok, records, cfg.cutoff_len, cfg.train_on_inputs)
    if not rows:
        raise DataError(f"{cfg.data}: none of {len(records)} records keeps a response token within "
                        f"cutoff_len={cfg.cutoff_len} (raise cutoff_len or shorten the prompts)")
    return RecordRows(rows)


def make_task(cfg: FinetuneConfig, rows: Rows | None = None) -> Task:
    """``rows``: tokenized on the driver (alpaca files); None = read prepared Arrow shards
    (``input_ids`` + ``labels``) in each worker."""
    def load_rows() -> Rows:
        return rows if rows is not None else ShardRows(find_shards(cfg.data))

    def export(engine, rank: int):
        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        # ZeRO-3: every rank enters (a collective), rank 0 writes whole tensors, not its shards.
        with engine.gathered(trainable):
            if rank == 0:
                return write_adapter(engine.module, cfg.model, cfg.output_dir)
        return None

    return Task(build_model=lambda: build_lora_model(cfg), load_rows=load_rows,
                export=export, seq_len=cfg.cutoff_len, pad_id=pad_id_of(cfg.model))


def prepare_inputs(cfg: FinetuneConfig) -> RecordRows | None:
    """Check everything on the driver (a worker error would be retried max_failures times) and
    tokenize alpaca data once; None when ``data`` is a dir of prepared shards."""
    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"model: {cfg.model} is not a Hugging Face model dir (no config.json)")
    try:
        prepare_ds_config(cfg)
        if _has_shards(Path(cfg.data)):
            ShardRows(find_shards(cfg.data))
            return None
        return tokenize_instructions(cfg)
    except (DataError, RecordError, DeepSpeedConfigError, IncompatibleCheckpoint) as exc:
        raise ConfigError(str(exc)) from None


def run(cfg: FinetuneConfig) -> dict:
    rows = prepare_inputs(cfg)
    return fit(cfg, make_task, shared={"rows": rows} if rows is not None else None)
