"""LoRA instruction tuning (KnowLM's finetune/lora) on Ray Train: DDP by default, ZeRO-3 supported.

Library entry point of ``jobs/finetune_lora.py`` and ``knowlm finetune-lora``: ``run(FinetuneConfig)``.
The output is a peft adapter dir; merge it offline (``knowlm weights merge-lora``).

Data (``cfg.data``):
- an alpaca json/jsonl file (or a dir of them): tokenized on the driver with the prompt masked;
  ``val_set_size`` records are held out by a seeded split (KnowLM: 2000);
- a dir of prepared instruction shards: ``DIR/train/part-*.arrow`` and optionally
  ``DIR/validation/part-*.arrow`` (Arrow IPC file format; ``input_ids`` and ``labels``,
  ``list<int32>``, labels already -100 over the prompt) + ``DIR/manifest.json``. Without a
  validation split, ``val_set_size`` rows of the train shards are held out the same way.

Validation loss runs every ``eval_every`` steps (and at the last) and goes to metrics.jsonl as
``{"step", "val_loss"}`` lines. ``num_epochs`` (KnowLM: 3) sets max_steps unless it is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from knowlm_ray.alpaca import RecordError, load_alpaca, tokenize_records
from knowlm_ray.config import ConfigError, FinetuneConfig
from knowlm_ray.train.checkpoint import IncompatibleCheckpoint
from knowlm_ray.train.data import DataError, RecordRows, Rows, ShardRows, find_shards, find_validation_shards
from knowlm_ray.train.deepspeed_presets import DeepSpeedConfigError, resolve_preset
from knowlm_ray.train.export import write_adapter
from knowlm_ray.train.loop import Task, fit, prepare_ds_config, resolve_max_steps
from knowlm_ray.train.pretrain import load_causal_lm, pad_id_of


class Subset:
    """Rows ``indices`` of another Rows (a held-out split of shards without copying them)."""

    def __init__(self, rows: Rows, indices: np.ndarray):
        self.rows, self.indices = rows, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.rows[int(self.indices[i])]


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index split; both sorted, so the train order stays the data's."""
    if val_size <= 0:
        return np.arange(n), np.empty(0, dtype=np.int64)
    if val_size >= n:
        raise DataError(
            f"val_set_size {val_size} leaves no training rows: the data has {n} usable rows "
            "(lower val_set_size, or 0 for no validation)"
        )
    perm = np.random.default_rng([seed, 0x76616C]).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _load_8bit(model_dir: str):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    try:
        import ray.train.torch

        device = ray.train.torch.get_device()
    except Exception:
        device = torch.device("cuda", torch.cuda.current_device())
    base = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map={"": device.index or 0},
        dtype=torch.float16,
    )
    # fp32 norms/head, input grads for the frozen int8 layers (alpaca-lora's prepare_model_for_int8_training)
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)


def build_lora_model(cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    base = _load_8bit(cfg.model) if cfg.load_in_8bit else load_causal_lm(cfg.model)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
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
        raise DataError(
            f"{cfg.data}: none of {len(records)} records keeps a response token within "
            f"cutoff_len={cfg.cutoff_len} (raise cutoff_len or shorten the prompts)"
        )
    return RecordRows(rows)


def split_records(rows: RecordRows, val_size: int, seed: int) -> tuple[RecordRows, RecordRows | None]:
    train, val = split_indices(len(rows), val_size, seed)
    if not len(val):
        return rows, None

    def pick(idx):
        return RecordRows([{"input_ids": rows[i][0], "labels": rows[i][1]} for i in idx])

    return pick(train), pick(val)


def load_shard_splits(cfg: FinetuneConfig) -> tuple[Rows, Rows | None]:
    """Prepared instruction shards: (train, validation) rows, memory-mapped."""
    rows = ShardRows(find_shards(cfg.data))
    val_files = find_validation_shards(cfg.data)
    if val_files:
        return rows, ShardRows(val_files)
    train, val = split_indices(len(rows), cfg.val_set_size, cfg.seed)
    if not len(val):
        return rows, None
    return Subset(rows, train), Subset(rows, val)


def make_task(cfg: FinetuneConfig, rows: Rows | None = None, val_rows: Rows | None = None) -> Task:
    """``rows``/``val_rows``: tokenized on the driver (alpaca files); None = read prepared Arrow
    shards (``input_ids`` + ``labels``) in each worker."""
    shards: dict = {}

    def splits():
        if not shards:
            shards["train"], shards["val"] = load_shard_splits(cfg)
        return shards["train"], shards["val"]

    def load_rows() -> Rows:
        return rows if rows is not None else splits()[0]

    def load_val_rows() -> Rows | None:
        return val_rows if rows is not None else splits()[1]

    def export(engine, rank: int):
        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        # ZeRO-3: every rank enters (a collective), rank 0 writes whole tensors, not its shards.
        with engine.gathered(trainable):
            if rank == 0:
                return write_adapter(engine.module, cfg.model, cfg.output_dir)
        return None

    return Task(
        build_model=lambda: build_lora_model(cfg),
        load_rows=load_rows,
        load_val_rows=load_val_rows,
        export=export,
        seq_len=cfg.cutoff_len,
        pad_id=pad_id_of(cfg.model),
    )


def check_8bit(cfg: FinetuneConfig) -> None:
    if not cfg.load_in_8bit:
        return
    if not cfg.use_gpu:
        raise ConfigError(
            "load_in_8bit: int8 base weights (bitsandbytes, QLoRA style) train on a GPU only; "
            "set use_gpu: true, or load_in_8bit: false to train the fp32 base on CPU"
        )
    if resolve_preset(cfg.deepspeed) is not None:
        raise ConfigError("load_in_8bit: DeepSpeed ZeRO cannot partition int8 weights; use deepspeed: ddp")


def prepare_inputs(cfg: FinetuneConfig) -> tuple[Rows, Rows | None] | None:
    """Check everything on the driver (a worker error would be retried max_failures times),
    tokenize alpaca data once and split off validation rows; resolve max_steps from num_epochs.
    Returns (train, validation) rows, or None when ``data`` is a dir of prepared shards."""
    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"model: {cfg.model} is not a Hugging Face model dir (no config.json)")
    check_8bit(cfg)
    try:
        prepare_ds_config(cfg)
        if _has_shards(Path(cfg.data)):
            train, _ = load_shard_splits(cfg)
            resolve_max_steps(cfg, len(train))
            return None
        train, val = split_records(tokenize_instructions(cfg), cfg.val_set_size, cfg.seed)
        resolve_max_steps(cfg, len(train))
        return train, val
    except (DataError, RecordError, DeepSpeedConfigError, IncompatibleCheckpoint) as exc:
        raise ConfigError(str(exc)) from None


def run(cfg: FinetuneConfig) -> dict:
    prepared = prepare_inputs(cfg)
    shared = None if prepared is None else {"rows": prepared[0], "val_rows": prepared[1]}
    return fit(cfg, make_task, shared=shared)
