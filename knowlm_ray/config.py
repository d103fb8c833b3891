"""Typed job configs, YAML loading and ``key.path=value`` overrides.

Every job is ``python jobs/X.py --config FILE [key.path=value ...]``. A config is a pydantic model
with ``extra="forbid"``, so a misspelt key or a wrong type is an error that names the key.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A user-caused config problem; the message names the file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- corpus
class SourceConfig(Strict):
    path: str
    source: str
    lang: Literal["zh", "en", "code"]
    format: Literal["jsonl", "text", "files"] = "jsonl"
    text_field: str | list[str] = "text"  # a list joins several fields (e.g. [title, content])
    glob: str = "**/*"
    weight: float = 1.0


class FilterConfig(Strict):
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(1_000_000, ge=1)
    max_symbol_ratio: float = Field(0.3, ge=0, le=1)


class DedupConfig(Strict):
    exact: bool = True
    near: bool = False
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(5, ge=1)


class PackConfig(Strict):
    mode: Literal["none", "greedy"] = "none"


class CorpusConfig(Strict):
    inputs: list[SourceConfig]
    tokenizer: str
    max_tokens: int = Field(1024, ge=8)
    min_tokens: int = Field(1, ge=1)  # samples shorter than this are dropped (KnowLM: 20)
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    pack: PackConfig = PackConfig()
    out_dir: str = "artifacts/corpus"
    rows_per_shard: int = Field(1000, ge=1)
    num_partitions: int = Field(0, ge=0)  # hash-shuffle partitions for dedup; 0: one per cluster CPU
    seed: int = 0


# --------------------------------------------------------------------------- training
class LoraSettings(Strict):
    """KnowLM's finetune/lora defaults: r 16, alpha 32, dropout 0.05 on all seven projections."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
    # Trained and saved whole next to the adapter (Chinese-LLaMA-Alpaca after a vocabulary
    # expansion: [embed_tokens, lm_head]).
    modules_to_save: list[str] = []


class TrainConfig(Strict):
    """Shared by pretraining and LoRA. Defaults are the tiny CPU profile."""

    model: str  # HF model directory (base weights + tokenizer)
    data: str  # corpus shard dir (pretrain) / alpaca file or instruction shard dir (LoRA)
    num_workers: int = Field(2, ge=0)  # 0 = Ray Train local mode (in the driver, no Ray cluster)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)  # < 1 on small boxes, or Ray Data and Train deadlock
    deepspeed: str | dict[str, Any] = "zero3"  # preset name (zero3, zero2, ddp) or a DeepSpeed dict
    # Switches applied on top of the DeepSpeed preset (see train/deepspeed_presets.py):
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16: dynamic loss scaling (V100); bf16: A100+
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states + step on the CPU (DeepSpeedCPUAdam)
    offload_param: bool = False  # ZeRO-3 only: parameters live in CPU memory between uses
    micro_batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of lr (HF cosine: 0)
    # 1.0 (LLaMA's own recipe); KnowLM's DeepSpeed JSON had no gradient_clipping key, i.e. none.
    # 0 = no clipping. Clipping costs one norm per step and keeps an fp16 loss spike from
    # wrecking the weights before the loss scaler reacts.
    max_grad_norm: float = Field(1.0, ge=0)
    max_steps: int | None = Field(None, ge=1)  # wins over num_epochs; neither given: 100
    num_epochs: float | None = Field(None, gt=0)  # passes over the training rows -> max_steps on the driver
    seq_len: int = Field(256, ge=8)  # rows are cut to this many tokens
    save_every: int = Field(50, ge=1)
    save_every_minutes: float = Field(0.0, ge=0)  # also save when this long since the last save (0: off)
    keep_checkpoints: int = Field(2, ge=1)
    storage_path: str = "artifacts/ray_results"
    run_name: str = "pretrain"
    output_dir: str = "artifacts/pretrained"
    seed: int = 0
    max_failures: int = Field(3, ge=0)
    log_every: int = Field(1, ge=1)
    device_peak_tflops: float = Field(0.0, ge=0)  # per worker, for the MFU estimate (V100 fp16: 125)

    @model_validator(mode="after")
    def _paths_absolute(self) -> "TrainConfig":
        # Ray workers run in other directories (and `ray job submit` ships a copy): make paths
        # absolute on the driver so every worker sees the same files.
        for key in ("model", "data", "storage_path", "output_dir"):
            value = getattr(self, key)
            if "://" not in value:
                object.__setattr__(self, key, str(Path(value).expanduser().resolve()))
        if self.max_steps is None and self.num_epochs is None:
            object.__setattr__(self, "max_steps", 100)
        return self

    @property
    def world_size(self) -> int:
        return max(self.num_workers, 1)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step: micro batch x accumulation x workers."""
        return self.micro_batch_size * self.grad_accum * self.world_size


class PretrainConfig(TrainConfig):
    gradient_checkpointing: bool = False
    # Train only these modules (by name, e.g. [embed_tokens, lm_head]: Chinese-LLaMA-Alpaca's
    # stage 1 after a vocabulary expansion); the rest stays frozen. Empty: train everything.
    trainable_modules: list[str] = []
    # Share of the training samples drawn from each corpus source (normalised), e.g.
    # {baike: 0.5, en: 0.3, code: 0.2}. None: the corpus manifest's per-source ``weight``
    # (a sampling multiplier on each source's natural share), or natural order if all are 1.
    data_mix: dict[str, float] | None = None
    # Packed rows (several documents per row): positions restart at every document; "block"
    # also keeps attention inside each document, "positions" restarts positions only.
    packed_attention: Literal["block", "positions"] = "block"


class FinetuneConfig(TrainConfig):
    run_name: str = "finetune_lora"
    output_dir: str = "artifacts/lora"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    deepspeed: str | dict[str, Any] = "ddp"
    lora: LoraSettings = LoraSettings()
    cutoff_len: int = Field(512, ge=8)
    train_on_inputs: bool = False
    num_epochs: float | None = Field(3.0, gt=0)  # KnowLM: 3 epochs (max_steps, when given, wins)
    # KnowLM's batch_size 128 / micro 4: grad_accum = batch_size / (micro_batch_size x workers),
    # unless grad_accum is given (then batch_size is what it implies).
    batch_size: int | None = Field(128, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    val_set_size: int = Field(2000, ge=0)  # held-out records (seeded split); 0: no validation
    eval_every: int = Field(10, ge=0)  # validation loss every N steps (0: never; KnowLM: 10)
    load_in_8bit: bool = False  # int8 base weights via bitsandbytes (GPU only; KnowLM's default)

    @model_validator(mode="after")
    def _batch(self) -> "FinetuneConfig":
        per_step = self.micro_batch_size * self.world_size
        if self.grad_accum is None:
            if self.batch_size is None:
                object.__setattr__(self, "grad_accum", 1)
            elif self.batch_size % per_step:
                raise ValueError(
                    f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size} "
                    f"x {self.world_size} worker(s) = {per_step}; change one, or give grad_accum instead")
            else:
                object.__setattr__(self, "grad_accum", self.batch_size // per_step)
        elif "batch_size" in self.model_fields_set and self.batch_size not in (None, per_step * self.grad_accum):
            raise ValueError(
                f"batch_size {self.batch_size} != micro_batch_size {self.micro_batch_size} x grad_accum "
                f"{self.grad_accum} x {self.world_size} worker(s) = {per_step * self.grad_accum}; give one of "
                "batch_size / grad_accum")
        object.__setattr__(self, "batch_size", per_step * self.grad_accum)
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


# --------------------------------------------------------------------------- loading
def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict (value parsed as YAML: numbers, lists, bools)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {override!r} has an empty key")
    node = data
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = nxt
    node[keys[-1]] = _parse_value(raw)


def _format_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid config {where}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(cls: type[ConfigT], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None) -> ConfigT:
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(load_yaml(path))
    for ov in overrides:
        apply_override(data, ov)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, f"from {path}" if path else f"for {cls.__name__}")) from None


def parse_job_args(cls: type[ConfigT], argv: list[str] | None = None, description: str = "") -> ConfigT:
    """``--config FILE [key.path=value ...]`` -> a validated config (exits 2 on a bad config)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True, help="YAML config file")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides, value parsed as YAML")
    args = ap.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        ap.exit(2, f"error: {exc}\n")


# --------------------------------------------------------------------------- extraction
def _absolute(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser().resolve())


IETask = Literal["ner", "re", "ee"]


class BatchExtractConfig(Strict):
    """``jobs/batch_extract.py``: schema-driven extraction over a corpus with a Ray Data actor pool.

    ``schema``: a path to a label schema JSON or the schema itself, either per language
    (kg2instruct's ``{"zh": {"ner": [...], "re": [...], "ee": {...}}, "en": {...}}``, a document
    uses its language's section) or per task (``{"ner": [...], "re": [...]}``).
    """

    model: str  # HF model directory (merged LoRA or base); its tokenizer decodes corpus shards
    input: str  # a jsonl file, a directory of *.jsonl, or a corpus out_dir / shard dir (Arrow)
    input_format: Literal["auto", "jsonl", "shards"] = "auto"
    text_field: str = "text"  # jsonl: the text field
    id_field: str = "id"  # jsonl: the id field (absent: <file stem>:<line>)
    lang: Literal["zh", "en"] | None = None  # None: each document's "lang" field, else guessed
    tasks: list[IETask] = Field(default_factory=lambda: ["ner", "re"], min_length=1)
    schema_: str | dict[str, Any] = Field(alias="schema")
    out_dir: str = "artifacts/kg"
    block_size: int = Field(32, ge=1)  # documents per block = per part file = the unit of resume
    num_actors: int = Field(2, ge=1)  # model replicas in the Ray Data actor pool
    cpus_per_actor: float = Field(0.5, gt=0)  # < 1 on small boxes (Ray Data needs a CPU too)
    threads_per_actor: int = Field(1, ge=1)  # torch threads in each actor
    docs_per_call: int = Field(8, ge=1)  # documents whose prompts go into one generate call
    max_tokens: int = Field(128, ge=1)  # new tokens per prompt
    format: Literal["json", "tuple"] = "json"  # the answer format the prompts ask for
    max_chars: int = Field(400, ge=16)  # characters of text per prompt (longer texts are chunked)
    limit: int = Field(0, ge=0)  # only the first N documents (0: all)
    device: str = "cpu"
    dtype: str = "float32"
    use_gpu: bool = False  # one GPU per actor (device is then cuda)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _paths_absolute(self) -> "BatchExtractConfig":
        for key in ("model", "input", "out_dir"):
            object.__setattr__(self, key, _absolute(getattr(self, key)))
        if isinstance(self.schema_, str):
            object.__setattr__(self, "schema_", _absolute(self.schema_))
        return self


class EvaluateConfig(Strict):
    """``jobs/evaluate.py``: extraction scores on a gold IE file and / or perplexity on corpus shards."""

    model: str
    gold: str | None = None  # IE records (jsonl, DESIGN format + lang)
    schema_: str | dict[str, Any] | None = Field(None, alias="schema")  # per-lang schema; None: the gold's labels
    tasks: list[IETask] = Field(default_factory=lambda: ["ner", "re", "ee"], min_length=1)
    match: Literal["set", "count"] = "set"
    limit: int = Field(0, ge=0)  # gold records (0: all)
    docs_per_call: int = Field(8, ge=1)
    max_tokens: int = Field(128, ge=1)
    format: Literal["json", "tuple"] = "json"
    max_chars: int = Field(400, ge=16)
    shards: str | None = None  # corpus out_dir or shard dir for perplexity
    ppl_max_rows: int = Field(0, ge=0)  # 0: every row
    ppl_batch_size: int = Field(8, ge=1)
    out_dir: str = "artifacts/eval"
    device: str = "cpu"
    dtype: str = "float32"

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if not self.gold and not self.shards:
            raise ValueError("give gold (extraction scores) and/or shards (perplexity)")
        for key in ("model", "gold", "shards", "out_dir"):
            if getattr(self, key):
                object.__setattr__(self, key, _absolute(getattr(self, key)))
        if isinstance(self.schema_, str):
            object.__setattr__(self, "schema_", _absolute(self.schema_))
        return self


# --------------------------------------------------------------------------- instruction data
class InstructionsConfig(Strict):
    """``jobs/prepare_instructions.py``: alpaca files and / or IE records -> tokenised, masked shards.

    Writes ``out_dir/train/part-NNNNN.arrow``, ``out_dir/validation/part-NNNNN.arrow``,
    ``out_dir/quarantine/`` and ``out_dir/manifest.json`` (see ``knowlm_ray.instruct.prepare``).
    """

    inputs: list[str] = Field(default_factory=list)  # alpaca .json / .jsonl files or directories of them
    ie_records: str | None = None  # IE records (jsonl): built into instructions with kg2instruct first
    schema_: str | None = Field(None, alias="schema")  # label schema for ie_records
    tokenizer: str  # HF tokenizer directory
    cutoff_len: int = Field(512, ge=8)  # KnowLM: 512
    train_on_inputs: bool = False  # false: the prompt's labels are -100
    val_set_size: int = Field(2000, ge=0)  # validation rows (whole source records; KnowLM: 2000)
    seed: int = 0  # the split hash and the instruction builder's stream
    neg_ratio: float = Field(0.15, ge=0, le=1)  # kg2instruct negative sampling
    out_dir: str = "artifacts/instructions"
    rows_per_shard: int = Field(10000, ge=1)
    num_tokenizers: int = Field(1, ge=1)  # tokenizer actors in the Ray Data pool

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> "InstructionsConfig":
        if not self.inputs and not self.ie_records:
            raise ValueError("give inputs (alpaca json/jsonl) and/or ie_records (+ schema)")
        if self.ie_records and not self.schema_:
            raise ValueError("ie_records needs schema (the label schema JSON)")
        object.__setattr__(self, "inputs", [_absolute(p) for p in self.inputs])
        for key in ("ie_records", "schema_", "tokenizer", "out_dir"):
            if getattr(self, key):
                object.__setattr__(self, key, _absolute(getattr(self, key)))
        return self
