"""Typed job configs, YAML loading and ``key.path=value`` overrides.

Every job is ``python jobs/X.py --config FILE [key.path=value ...]``. A config is a pydantic model
with ``extra="forbid"``, so a misspelt key or a wrong type is an error that names the key.
"""

from __future__ import annotations

import argparse
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from knowlm_ray.errors import UserError, user_errors
from knowlm_ray.paths import JobPathError, check_job_paths, enter_root


class ConfigError(UserError, ValueError):
    """A user-caused config problem; the message names the file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- corpus
class SourceConfig(Strict):
    path: str = Field(description="A file, or a directory whose files matching glob are read.")
    source: str = Field(
        description="Name of this source: in doc_ids, the manifest, mix.caps / mix.shares and pretrain's data_mix."
    )
    lang: Literal["zh", "en", "code"] = Field(
        description="Language of the documents; picks the filters' rules and the converter."
    )
    format: Literal["jsonl", "text", "parquet", "files"] = Field(
        "jsonl",
        description="jsonl / text (one document per line) / parquet (one per row) / files (one per "
        "file, e.g. a code tree by glob). jsonl, text and files may be gzip (.gz) or zstd "
        "(.zst, .zstd) compressed.",
    )
    text_field: str | list[str] = Field(
        "text", description="jsonl / parquet: the text field; a list joins several fields (e.g. [title, content])."
    )
    glob: str = Field("**/*", description="Files read when path is a directory.")
    weight: float = Field(
        1.0,
        description="Sampling weight in pretraining: a multiplier on this source's "
        "natural share (repeats data; mix.caps / mix.shares cut it).",
    )
    converter: Literal["auto", "none", "plain", "wiki", "baike", "code"] = Field(
        "auto",
        description="Text clean-up: auto is code for lang code, plain otherwise; wiki / baike also "
        "strip dump markup; none keeps the text as it is.",
    )


class Switch(Strict):
    enabled: bool = Field(True, description="Apply this filter (false: skip it).")


class LengthFilter(Switch):
    min_chars: int = Field(20, ge=0, description="Documents with fewer characters are dropped.")
    max_chars: int = Field(1_000_000, ge=1, description="Documents with more characters are dropped.")


class CharRatioFilter(Switch):
    """Character classes over non-space characters (prose; code has its own rules)."""

    max_symbol_ratio: float = Field(
        0.3, ge=0, le=1, description="Most symbols (not alphanumeric, not prose punctuation) per non-space character."
    )
    max_digit_ratio: float = Field(0.3, ge=0, le=1, description="Most digits per non-space character.")
    min_letter_ratio: float = Field(
        0.5, ge=0, le=1, description="Fewest letters of any script (CJK, Latin, ...) per non-space character."
    )


class LanguageFilter(Switch):
    """Script check: share of the letters in the source language's script (zh: CJK, en: Latin)."""

    min_script_ratio: dict[Literal["zh", "en"], float] = Field(
        {"zh": 0.5, "en": 0.8}, description="Per language: the fewest letters in its script, as a share of all letters."
    )


class RepetitionFilter(Switch):
    """Gopher (Rae et al. 2021, table A1) repetition rules; words are script-aware (one per CJK
    character). Fractions above the limit drop the document."""

    max_dup_line_frac: float = Field(0.3, ge=0, le=1, description="Duplicate lines / lines.")
    max_dup_line_char_frac: float = Field(0.2, ge=0, le=1, description="Characters in duplicate lines / characters.")
    max_dup_para_frac: float = Field(0.3, ge=0, le=1, description="Duplicate paragraphs / paragraphs.")
    max_dup_para_char_frac: float = Field(
        0.2, ge=0, le=1, description="Characters in duplicate paragraphs / characters."
    )
    max_top_ngram_char_frac: dict[int, float] = Field(
        {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> the largest share of the characters covered by the most frequent word n-gram.",
    )
    max_dup_ngram_char_frac: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> the largest share of the characters covered by word n-grams that occur more than once.",
    )
    min_words: int = Field(
        50,
        ge=0,
        description="The n-gram rules apply to documents of at least this many "
        "words (shorter ones give no meaningful fractions).",
    )


class CodeFilter(Switch):
    """Code rules (lang: code only)."""

    max_line_length: int = Field(
        1000, ge=1, description="Files with a longer line are dropped (minified or data files)."
    )
    max_mean_line_length: float = Field(100, gt=0, description="Files with a longer mean line are dropped.")
    min_alnum_frac: float = Field(0.25, ge=0, le=1, description="Fewest alphanumeric characters per character.")
    autogen_markers: list[str] = Field(
        [
            "do not edit",
            "auto-generated",
            "autogenerated",
            "automatically generated",
            "code generated by",
            "generated by the protocol buffer",
            "@generated",
        ],
        description="Files whose first autogen_scan_lines lines hold one of these (case-insensitive) are "
        "generated code and dropped.",
    )
    autogen_scan_lines: int = Field(5, ge=0, description="Lines at the top of a file searched for autogen_markers.")


class BlocklistFilter(Switch):
    """Harmful-content block-list: one term per line (``#`` comments); ``builtin:zh`` and
    ``builtin:en`` are the small lists shipped in ``knowlm_ray/corpus/blocklists/``. ASCII
    terms match case-insensitively on word boundaries, others as substrings."""

    files: list[str] = Field(
        ["builtin:zh", "builtin:en"], description="Block-list files (one term per line), or builtin:zh / builtin:en."
    )
    min_hits: int = Field(1, ge=1, description="Occurrences of listed terms that drop a document.")


class PIIFilter(Switch):
    """Personal data (knowlm_ray/corpus/pii.py): e-mail addresses, phone numbers, IP addresses."""

    enabled: bool = Field(False, description="Apply this filter (false: skip it).")
    action: Literal["mask", "drop"] = Field(
        "mask", description="mask: replace each by <EMAIL>, <PHONE> or <IP> and keep the document; drop: drop it."
    )


class FilterConfig(Strict):
    length: LengthFilter = Field(LengthFilter(), description="Document length in characters.")
    char_ratio: CharRatioFilter = Field(
        CharRatioFilter(), description="Character classes over non-space characters (prose; code has its own rules)."
    )
    language: LanguageFilter = Field(
        LanguageFilter(),
        description="Script check: share of the letters in the source language's script (zh: CJK, en: Latin).",
    )
    repetition: RepetitionFilter = Field(
        RepetitionFilter(),
        description="Gopher (Rae et al. 2021, table A1) "
        "repetition rules; a fraction above its limit drops the document.",
    )
    code: CodeFilter = Field(CodeFilter(), description="Code rules (lang: code only).")
    blocklist: BlocklistFilter = Field(BlocklistFilter(), description="Harmful-content block-list.")
    pii: PIIFilter = Field(
        PIIFilter(), description="Personal data (e-mail, phone, IP): masked or the document dropped; off by default."
    )


class DedupConfig(Strict):
    exact: bool = Field(True, description="Drop exact duplicates (same normalised text; the smallest doc_id is kept).")
    near: bool = Field(False, description="Drop near duplicates (MinHash LSH, then verified by Jaccard).")
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Near duplicates: Jaccard similarity of the shingle "
        "sets at or above which two documents are duplicates.",
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations per document.")
    ngram: int = Field(5, ge=1, description="Shingles of alphabetic text: word n-grams of this size.")
    char_ngram: int = Field(5, ge=1, description="Shingles of CJK text and code: character n-grams of this size.")
    bands: int = Field(
        0, ge=0, description="LSH bands; 0: bands and rows derived from threshold (datasketch's _optimal_param)."
    )
    rows: int = Field(0, ge=0, description="LSH rows per band (with bands; 0: derived).")
    false_positive_weight: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Weight of false positives when bands "
        "and rows are derived (candidates are verified, so recall is favoured).",
    )
    false_negative_weight: float = Field(
        0.8, ge=0, le=1, description="Weight of false negatives when bands and rows are derived."
    )
    max_bucket_compare: int = Field(
        64,
        ge=2,
        description="A band bucket of up to this many documents has all "
        "its pairs compared; in a larger one each member is compared with the first "
        "this many by doc_id.",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if bool(self.bands) != bool(self.rows):
            raise ValueError("dedup.bands and dedup.rows go together (both 0 = derived from threshold)")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup.bands * dedup.rows = {self.bands * self.rows} > num_perm {self.num_perm}")
        return self


class PackConfig(Strict):
    mode: Literal["none", "greedy"] = Field(
        "none", description="none: one sample per row; greedy: samples of a source packed into rows of max_tokens."
    )
    split_samples: bool = Field(
        True,
        description="greedy: true cuts samples at row ends so every row but a "
        "source's last has exactly max_tokens tokens; false keeps samples whole (rows "
        "of at most max_tokens).",
    )


class SplitConfig(Strict):
    """How a document's short last sample (its *tail*) is handled; see corpus/split.py.

    keep (default): left as it is; samples stay disjoint and greedy packing wastes nothing on it.
    backfill (KnowLM): topped up with the preceding whole sentences, which are then trained on twice.
    drop: dropped and counted (short_dropped). A tail is short under short_tail x max_tokens.
    keep is the default: with pack.mode greedy a short tail costs no padding at all, while
    backfill repeats ~6% of the tokens and drop loses ~1.3% (benchmarks/corpus.py, max_tokens 256).
    """

    tail: Literal["keep", "backfill", "drop"] = Field(
        "keep",
        description="A document's short last sample: keep it, backfill it with the sentences before it, or drop it.",
    )
    short_tail: float = Field(
        0.25, gt=0, le=1, description="A last sample is short under short_tail x max_tokens tokens."
    )


class MixConfig(Strict):
    """Per-source caps and shares, applied when the corpus is prepared (after dedup and
    tokenising). Which documents stay is decided by a hash of (seed, doc_id), so the choice is
    deterministic and an unbiased sample of each source. ``manifest.json`` records each source's
    documents and tokens before and after under ``mix``. (``inputs[].weight`` is different: a
    sampling weight for training, which repeats data rather than dropping it.)
    """

    unit: Literal["documents", "tokens"] = Field("documents", description="What caps and shares count.")
    caps: dict[str, int] = Field({}, description="source -> the most documents (or tokens) kept of it.")
    shares: dict[str, float] = Field(
        {},
        description="source -> its share of the result, every source named "
        "(e.g. KnowLM's 5.5 M zh : 1.5 M en : 0.9 M code samples as {zh: 5.5, en: 1.5, "
        "code: 0.9}): the largest corpus with exactly these proportions that the data "
        "allows (sources are cut, never repeated).",
    )

    @model_validator(mode="after")
    def _values(self) -> MixConfig:
        bad = {k: v for k, v in self.caps.items() if v < 0}
        if bad:
            raise ValueError(f"mix.caps must be >= 0, got {bad}")
        if self.shares and (any(v < 0 for v in self.shares.values()) or sum(self.shares.values()) <= 0):
            raise ValueError(f"mix.shares must be >= 0 with a positive sum, got {self.shares}")
        return self

    @property
    def active(self) -> bool:
        return bool(self.caps or self.shares)


class CorpusConfig(Strict):
    inputs: list[SourceConfig] = Field(description="The sources to read, one mapping each.")
    tokenizer: str = Field(description="HF tokenizer directory (e.g. the model's).")
    max_tokens: int = Field(1024, ge=8, description="Tokens per sample (and per row when packed).")
    min_tokens: int = Field(1, ge=1, description="Samples shorter than this are dropped (KnowLM: 20).")
    split: SplitConfig = Field(SplitConfig(), description="Short-tail handling (keep / backfill / drop).")
    filters: FilterConfig = Field(FilterConfig(), description="Quality filters, each with enabled: true/false.")
    dedup: DedupConfig = Field(DedupConfig(), description="Exact and near-duplicate removal.")
    pack: PackConfig = Field(PackConfig(), description="Packing samples into rows.")
    out_dir: str = Field(
        "artifacts/corpus", description="Output directory: shards/, quarantine/, dropped/, manifest.json."
    )
    rows_per_shard: int = Field(1000, ge=1, description="Rows per Arrow shard file.")
    write_dropped: bool = Field(
        True, description="Write out_dir/dropped/*.jsonl: doc_id, status and reason of every dropped document."
    )
    tokenize_with: Literal["tasks", "actors"] = Field(
        "tasks",
        description="tasks: tokenise in Ray tasks, one cached tokenizer per worker process (no actor "
        "start-up); actors: an actor pool of up to one actor per CPU.",
    )
    num_partitions: int = Field(0, ge=0, description="Hash-shuffle partitions for dedup; 0: one per cluster CPU.")
    mix: MixConfig = Field(MixConfig(), description="Per-source caps / shares (off by default).")
    seed: int = Field(0, description="Seed of the mix's document choice (a hash of seed and doc_id).")

    @model_validator(mode="after")
    def _mix_sources(self) -> CorpusConfig:
        names = {s.source for s in self.inputs}
        for key in ("caps", "shares"):
            unknown = sorted(set(getattr(self.mix, key)) - names)
            if unknown:
                raise ValueError(f"mix.{key} names source(s) {unknown} that no input has (sources: {sorted(names)})")
        missing = sorted(names - set(self.mix.shares)) if self.mix.shares else []
        if missing:
            raise ValueError(f"mix.shares has no share for source(s) {missing} (give 0 to leave them out)")
        return self


# --------------------------------------------------------------------------- training
class LoraSettings(Strict):
    """KnowLM's finetune/lora defaults: r 16, alpha 32, dropout 0.05 on all seven projections."""

    r: int = Field(16, ge=1, description="Rank of the LoRA matrices.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"],
        description="Modules (by name) that get LoRA matrices.",
    )
    modules_to_save: list[str] = Field(
        [],
        description="Modules trained and saved whole next to the adapter "
        "(Chinese-LLaMA-Alpaca after a vocabulary expansion: [embed_tokens, lm_head]).",
    )


class TrainConfig(Strict):
    """Shared by pretraining and LoRA. Defaults are the tiny CPU profile."""

    model: str = Field(description="HF model directory (base weights + tokenizer).")
    data: str = Field(
        description="Corpus out_dir or shard dir (pretrain) / alpaca json(l) file or directory, "
        "or prepared instruction shards (LoRA)."
    )
    num_workers: int = Field(
        2, ge=0, description="Ray Train workers; 0: Ray Train local mode (in the driver, no Ray cluster)."
    )
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(
        0.5, gt=0, description="CPUs Ray reserves per worker (< 1 on small boxes, or Ray Data and Train deadlock)."
    )
    deepspeed: str | dict[str, Any] = Field(
        "zero3",
        description="A preset name (zero3, zero2, ddp) or a DeepSpeed config dict (see train/deepspeed_presets.py).",
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="Applied on top of the DeepSpeed preset. fp16: dynamic loss scaling (V100); bf16: A100 and newer.",
    )
    offload_optimizer: bool = Field(
        False, description="ZeRO-Offload: optimizer states and step on the CPU (DeepSpeedCPUAdam)."
    )
    offload_param: bool = Field(False, description="ZeRO-3 only: parameters live in CPU memory between uses.")
    micro_batch_size: int = Field(4, ge=1, description="Rows per worker per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro batches accumulated per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (linear warm-up, then cosine decay).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warm-up.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of lr (HF cosine: 0).")
    # KnowLM's DeepSpeed JSON had no gradient_clipping key (no clipping); 1.0 is LLaMA's own recipe, and
    # keeps an fp16 loss spike from wrecking the weights before the loss scaler reacts.
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0: no clipping.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; wins over num_epochs (neither given: 100).")
    num_epochs: float | None = Field(
        None, gt=0, description="Passes over the training rows; sets max_steps unless it is given."
    )
    seq_len: int = Field(256, ge=8, description="Rows are cut to this many tokens.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N steps.")
    save_every_minutes: float = Field(
        0.0, ge=0, description="Also checkpoint when this long since the last save (0: off)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept in storage_path/run_name.")
    storage_path: str = Field(
        "artifacts/ray_results", description="Ray Train storage: checkpoints and results (a local directory or a URI)."
    )
    run_name: str = Field("pretrain", description="Run directory under storage_path; the same name resumes.")
    output_dir: str = Field("artifacts/pretrained", description="The final model, metrics.jsonl and tensorboard/.")
    seed: int = Field(0, description="Seed of the data order and of any random initialisation.")
    max_failures: int = Field(3, ge=0, description="Restarts from the newest checkpoint after a lost worker.")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    device_peak_tflops: float = Field(
        0.0, ge=0, description="Peak TFLOPS per worker, for the MFU estimate (V100 fp16: 125; 0: no MFU)."
    )

    @model_validator(mode="after")
    def _paths_absolute(self) -> TrainConfig:
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
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, more compute)."
    )
    trainable_modules: list[str] = Field(
        [],
        description="Train only these modules (by name, e.g. "
        "[embed_tokens, lm_head]: Chinese-LLaMA-Alpaca's stage 1 after a vocabulary "
        "expansion); the rest stays frozen. Empty: train everything.",
    )
    data_mix: dict[str, float] | None = Field(
        None,
        description="Share of the training samples drawn from each corpus source (normalised), e.g. "
        "{baike: 0.5, en: 0.3, code: 0.2}. null: the corpus manifest's per-source weight, or "
        "natural order if all are 1.",
    )
    packed_attention: Literal["block", "positions"] = Field(
        "block",
        description="Packed rows (several documents per row): positions restart at every document; "
        "block also keeps attention inside each document, positions restarts positions only.",
    )
    keep_global_batch: bool = Field(
        False,
        description="Resuming on a different num_workers: false keeps grad_accum (the global batch "
        "changes with the worker count); true sets grad_accum so the checkpoint's global batch "
        "is kept (it must divide evenly). With num_epochs a changed global batch also changes "
        "max_steps and the rest of the lr schedule.",
    )


class FinetuneConfig(TrainConfig):
    run_name: str = Field("finetune_lora", description="Run directory under storage_path; the same name resumes.")
    output_dir: str = Field("artifacts/lora", description="The peft adapter (+ tokenizer) and metrics.jsonl.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (linear warm-up, then cosine decay).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    deepspeed: str | dict[str, Any] = Field(
        "ddp",
        description="A preset name (zero3, zero2, ddp) or a DeepSpeed config dict (see train/deepspeed_presets.py).",
    )
    lora: LoraSettings = Field(
        LoraSettings(),
        description="The adapter (KnowLM's defaults: r 16, alpha 32, dropout 0.05 on all seven projections).",
    )
    cutoff_len: int = Field(512, ge=8, description="Tokens per prompt + response; longer rows are cut.")
    train_on_inputs: bool = Field(
        False, description="false: only the response is learned (the prompt's labels are -100)."
    )
    num_epochs: float | None = Field(
        3.0, gt=0, description="Passes over the training rows (KnowLM: 3); max_steps, when given, wins."
    )
    batch_size: int | None = Field(
        128,
        ge=1,
        description="Global batch (KnowLM: 128): grad_accum = batch_size / "
        "(micro_batch_size x workers), unless grad_accum is given.",
    )
    grad_accum: int | None = Field(
        None, ge=1, description="Micro batches per optimizer step; given, it wins and batch_size is what it implies."
    )
    val_set_size: int = Field(2000, ge=0, description="Held-out records (seeded split); 0: no validation.")
    eval_every: int = Field(10, ge=0, description="Validation loss every N steps (0: never; KnowLM: 10).")
    load_in_8bit: bool = Field(False, description="int8 base weights via bitsandbytes (GPU only; KnowLM's default).")

    @model_validator(mode="after")
    def _batch(self) -> FinetuneConfig:
        per_step = self.micro_batch_size * self.world_size
        if self.grad_accum is None:
            if self.batch_size is None:
                object.__setattr__(self, "grad_accum", 1)
            elif self.batch_size % per_step:
                raise ValueError(
                    f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size} "
                    f"x {self.world_size} worker(s) = {per_step}; change one, or give grad_accum instead"
                )
            else:
                object.__setattr__(self, "grad_accum", self.batch_size // per_step)
        elif "batch_size" in self.model_fields_set and self.batch_size not in (None, per_step * self.grad_accum):
            raise ValueError(
                f"batch_size {self.batch_size} != micro_batch_size {self.micro_batch_size} x grad_accum "
                f"{self.grad_accum} x {self.world_size} worker(s) = {per_step * self.grad_accum}; give one of "
                "batch_size / grad_accum"
            )
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
    """One line for one problem (``invalid config from F: key: what``), one line per key for more."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        else:
            problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    if len(problems) == 1:
        return f"invalid config {where}: {problems[0]}"
    return "\n  ".join([f"invalid config {where}:"] + problems)


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


def load_config(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> ConfigT:
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(load_yaml(path))
    for ov in overrides:
        apply_override(data, ov)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, f"from {path}" if path else f"for {cls.__name__}")) from None


def add_job_arguments(ap: argparse.ArgumentParser, cls: type[BaseModel], job: str | None = None) -> None:
    """``--config FILE [key.path=value ...]`` on ``ap``, and the config's keys as its epilog."""
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.epilog = keys_help(cls, job)
    ap.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="YAML config file"
        + (f" (`knowlm config show {job}` prints a commented one with every key)" if job else ""),
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override a key of the file (dotted for nested keys); the value is parsed as YAML",
    )


def config_from_args(cls: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """The validated config of parsed ``--config`` + overrides; a bad one raises ConfigError."""
    try:
        enter_root()  # knowlm_ray/paths.py: relative paths under `ray job submit --working-dir`
        return check_job_paths(load_config(cls, args.config, args.overrides))
    except JobPathError as exc:
        raise ConfigError(str(exc)) from None


def parse_job_args(
    cls: type[ConfigT],
    argv: list[str] | None = None,
    description: str = "",
    job: str | None = None,
    prog: str | None = None,
) -> ConfigT:
    """``--config FILE [key.path=value ...]`` -> a validated config (exits 2 on a bad config)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    add_job_arguments(ap, cls, job)
    args = ap.parse_args(argv)
    with user_errors():
        return config_from_args(cls, args)


# --------------------------------------------------------------------------- self-documentation
class KeyDoc(typing.NamedTuple):
    key: str  # dotted path; ``[]`` marks the items of a list of mappings
    type: str
    default: Any  # REQUIRED, or the default value
    description: str
    section: bool  # a mapping whose keys follow (a nested model)
    depth: int


REQUIRED = object()
NBSP = "\u00a0"


def _model_of(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model, is it a list of them) of a field's annotation, else (None, False)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    if typing.get_origin(ann) is list:
        (item,) = typing.get_args(ann) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def _variants_of(ann: Any) -> tuple[list[type[BaseModel]], str] | None:
    """(the models, the tag key) of a list of tagged mappings, ``list[Annotated[A | B | ...,
    Field(discriminator=TAG)]]`` (curate's ``selectors``), else None."""
    if typing.get_origin(ann) is not list or not typing.get_args(ann):
        return None
    item = typing.get_args(ann)[0]
    if typing.get_origin(item) is not typing.Annotated:
        return None
    base, *meta = typing.get_args(item)
    tag = next((m.discriminator for m in meta if isinstance(getattr(m, "discriminator", None), str)), None)
    models = list(typing.get_args(base))
    if tag is None or not models or not all(isinstance(m, type) and issubclass(m, BaseModel) for m in models):
        return None
    return models, tag


def _tag_value(model: type[BaseModel], tag: str) -> str:
    (value,) = typing.get_args(model.model_fields[tag].annotation)
    return str(value)


def _doc_line(model: type[BaseModel]) -> str:
    """The first paragraph of a model's docstring, on one line."""
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


def _type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "null"
    if ann is Any:
        return "any"
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]" if args else "dict"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return getattr(ann, "__name__", str(ann))


def _bounds(field: Any) -> str:
    out = []
    for m in field.metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                out.append(f"{op}{getattr(m, attr)}")
        if getattr(m, "min_length", None):
            out.append(f"at least {m.min_length}")
    return ", ".join(out)


def config_keys(cls: type[BaseModel], prefix: str = "", depth: int = 0) -> list[KeyDoc]:
    """Every key of ``cls``, nested ones as dotted paths, in declaration order."""
    out: list[KeyDoc] = []
    for name, field in cls.model_fields.items():
        key = prefix + (field.alias or name)
        desc = field.description or ""
        default = REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        variants = _variants_of(field.annotation)
        if variants is not None:  # each item picked by its tag: every kind's keys under key[tag=kind]
            models, tag = variants
            kinds = "|".join(_tag_value(m, tag) for m in models)
            out.append(KeyDoc(key, f"list of mappings, each picked by {tag}: {kinds}", default, desc, True, depth))
            for m in models:
                head = f"{key}[{tag}={_tag_value(m, tag)}]"
                out.append(KeyDoc(head, "mapping", None, _doc_line(m), True, depth + 1))
                out += [k for k in config_keys(m, head + ".", depth + 2) if k.key != f"{head}.{tag}"]
            continue
        model, is_list = _model_of(field.annotation)
        if model is not None:
            kind = "list of mappings" if is_list else "mapping"
            out.append(KeyDoc(key, kind, default, desc, True, depth))
            out += config_keys(model, key + ("[]." if is_list else "."), depth + 1)
            continue
        bounds = _bounds(field)
        out.append(
            KeyDoc(key, _type_name(field.annotation) + (f", {bounds}" if bounds else ""), default, desc, False, depth)
        )
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    text = yaml.safe_dump(
        _plain(value), default_flow_style=True, allow_unicode=True, width=10**9, sort_keys=False
    ).strip()
    return text[:-3].rstrip() if text.endswith("\n...") else text


def keys_help(
    cls: type[BaseModel],
    job: str | None = None,
    width: int = 100,
    title: str = "config keys (in the --config file, or as key.path=value overrides):",
) -> str:
    """The keys of ``cls`` for an argparse epilog: one key per line (type, default), its
    description wrapped below it."""
    lines = [title]
    if job:
        lines.insert(0, f"`knowlm config show {job}` prints these keys as a commented YAML file.\n")
    for k in config_keys(cls):
        if k.section:
            what = f"{k.type}" + (
                ", required"
                if k.default is REQUIRED
                else f", default {yaml_value(k.default)}"
                if isinstance(k.default, list)
                else ""
            )
        elif k.default is REQUIRED:
            what = f"{k.type}, required"
        else:
            what = f"{k.type}, default {yaml_value(k.default)}"
        lines.append(f"  {k.key}  ({what})")
        if k.description:
            lines += textwrap.wrap(k.description, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _yaml_lines(cls: type[BaseModel], indent: int, width: int, skip: str | None = None) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key == skip:
            continue
        variants = _variants_of(field.annotation)
        if variants is not None:
            out += _variant_lines(key, field, *variants, indent, width)
            continue
        model, is_list = _model_of(field.annotation)
        required = field.is_required()
        kind = ("list of mappings" if is_list else "mapping") if model else _type_name(field.annotation)
        bounds = "" if model else _bounds(field)
        note = f"[{kind}{', ' + bounds if bounds else ''}{', REQUIRED' if required else ''}]"
        text = f"{field.description or ''} {note.replace(' ', NBSP)}".strip()  # the note stays on one line
        out += [
            line.replace(NBSP, " ")
            for line in textwrap.wrap(
                text, max(width - indent, 40), initial_indent=pad + "# ", subsequent_indent=pad + "# "
            )
        ]
        if model is not None and is_list:
            out.append(f"{pad}{key}:")
            out.append(f"{pad}  -")
            out += _yaml_lines(model, indent + 4, width)
        elif model is not None:
            out.append(f"{pad}{key}:")
            out += _yaml_lines(model, indent + 2, width)
        else:
            value = "null" if required else yaml_value(field.get_default(call_default_factory=True))
            out.append(f"{pad}{key}: {value}")
    return out


def _variant_lines(key: str, field: Any, models: list[type[BaseModel]], tag: str, indent: int, width: int) -> list[str]:
    """A list of tagged mappings: its default as the value, then each kind's keys as a commented
    item to copy into the list."""
    pad = " " * indent
    kinds = "|".join(_tag_value(m, tag) for m in models)
    note = f"[list of mappings, each picked by {tag}: {kinds}]"

    def wrap(text: str, prefix: str) -> list[str]:
        return textwrap.wrap(text, max(width - len(prefix), 40), initial_indent=prefix, subsequent_indent=prefix)

    out = wrap(f"{field.description or ''} {note}".strip(), pad + "# ")
    out.append(f"{pad}{key}: {yaml_value(field.get_default(call_default_factory=True))}")
    for m in models:
        value = _tag_value(m, tag)
        out += wrap(f"{key}[{tag}={value}]: {_doc_line(m)}", pad + "# ")
        out.append(f"{pad}#   - {tag}: {value}")
        out += [f"{pad}#   {line}" for line in _yaml_lines(m, 2, max(width - indent - 4, 40), skip=tag)]
    return out


def commented_yaml(cls: type[BaseModel], indent: int = 0, width: int = 100) -> list[str]:
    """Every key of ``cls`` as YAML lines: the description (type, REQUIRED) as a ``#`` comment
    above each key, the default as its value; a required key is ``null`` until filled in."""
    return _yaml_lines(cls, indent, width)


# --------------------------------------------------------------------------- extraction
def _absolute(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser().resolve())


IETask = Literal["ner", "re", "ee"]
# The names of knowlm_ray.ie.formats.FORMATS (config sits below ie, so they are spelt here; a test
# keeps the two equal).
PromptFormatName = Literal["alpaca", "oneke", "zhixi", "chat"]
PROMPT_FORMAT_HELP = (
    "How the model is asked (knowlm_ray.ie.formats): alpaca (this project's IE wording), oneke "
    "(zjunlp/OneKE), zhixi (knowlm-13b-zhixi / -ie), chat (the model tokenizer's chat template)."
)


class BatchExtractConfig(Strict):
    """``jobs/batch_extract.py``: schema-driven extraction over a corpus with a Ray Data actor pool.

    ``schema``: a path to a label schema JSON or the schema itself, either per language
    (kg2instruct's ``{"zh": {"ner": [...], "re": [...], "ee": {...}}, "en": {...}}``, a document
    uses its language's section) or per task (``{"ner": [...], "re": [...]}``).
    """

    model: str = Field(
        description="HF model directory (merged LoRA or base); its tokenizer also decodes corpus shards."
    )
    input: str = Field(description="A jsonl file, a directory of *.jsonl, or a corpus out_dir / shard dir (Arrow).")
    input_format: Literal["auto", "jsonl", "shards"] = Field(
        "auto", description="auto: shards if input holds Arrow shards, else jsonl."
    )
    text_field: str = Field("text", description="jsonl: the text field.")
    id_field: str = Field("id", description="jsonl: the id field (absent: <file stem>:<line>).")
    lang: Literal["zh", "en"] | None = Field(
        None, description="Language of every document; null: each document's lang field, else guessed from its text."
    )
    tasks: list[IETask] = Field(
        default_factory=lambda: ["ner", "re"], min_length=1, description="Extraction tasks: ner, re, ee."
    )
    schema_: str | dict[str, Any] = Field(
        alias="schema",
        description="Label schema: a JSON file or the "
        "schema itself, per language ({zh: {ner: [...], re: [...], ee: {...}}, "
        "en: ...}) or per task ({ner: [...], re: [...]}).",
    )
    out_dir: str = Field(
        "artifacts/kg", description="Output: records.jsonl, triples.parquet, summary.json and parts/ (resume state)."
    )
    block_size: int = Field(32, ge=1, description="Documents per block = per part file = the unit of resume.")
    num_actors: int = Field(2, ge=1, description="Model replicas in the Ray Data actor pool.")
    cpus_per_actor: float = Field(
        0.5, gt=0, description="CPUs per actor (< 1 on small boxes: Ray Data needs a CPU too)."
    )
    threads_per_actor: int = Field(1, ge=1, description="torch threads in each actor.")
    docs_per_call: int = Field(8, ge=1, description="Documents whose prompts go into one generate call.")
    max_tokens: int = Field(128, ge=1, description="New tokens per prompt.")
    format: Literal["json", "tuple"] = Field("json", description="The answer format the prompts ask for.")
    prompt_format: PromptFormatName = Field("alpaca", description=PROMPT_FORMAT_HELP)
    max_chars: int = Field(400, ge=16, description="Characters of text per prompt (longer texts are chunked).")
    limit: int = Field(0, ge=0, description="Only the first N documents (0: all).")
    device: str = Field("cpu", description="torch device of each actor's model (cpu, cuda).")
    dtype: str = Field("float32", description="torch dtype of the model (float32, float16, bfloat16).")
    use_gpu: bool = Field(False, description="One GPU per actor (device is then cuda).")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _paths_absolute(self) -> BatchExtractConfig:
        for key in ("model", "input", "out_dir"):
            object.__setattr__(self, key, _absolute(getattr(self, key)))
        if isinstance(self.schema_, str):
            object.__setattr__(self, "schema_", _absolute(self.schema_))
        return self


class EvaluateEditConfig(Strict):
    """EasyEdit's editing metrics in ``jobs/evaluate.py`` (what ``knowlm edit eval`` reports)."""

    requests: str = Field(description="Edit requests (KnowEdit, ZsRE or plain jsonl) whose prompts are scored.")
    edit: str | None = Field(
        None, description="An edit directory computed on model (knowlm edit apply's output); null: the model only."
    )
    ike: bool = Field(False, description="Also score IKE: the new facts as in-context demonstrations.")


class EvaluateConfig(Strict):
    """``jobs/evaluate.py``: extraction scores on a gold IE file and / or perplexity on corpus shards."""

    model: str = Field(description="HF model directory to evaluate.")
    gold: str | None = Field(
        None,
        description="Gold IE records (jsonl with text, lang and the task lists) for "
        "extraction P/R/F1; null: no extraction scores.",
    )
    schema_: str | dict[str, Any] | None = Field(
        None,
        alias="schema",
        description="Per-language label schema (a JSON file or the schema); null: the labels the gold uses.",
    )
    tasks: list[IETask] = Field(
        default_factory=lambda: ["ner", "re", "ee"], min_length=1, description="Extraction tasks scored: ner, re, ee."
    )
    match: Literal["set", "count"] = Field(
        "set", description="set: de-duplicate per document; count: one-to-one multiset matching."
    )
    limit: int = Field(0, ge=0, description="Only the first N gold records (0: all).")
    docs_per_call: int = Field(8, ge=1, description="Documents whose prompts go into one generate call.")
    max_tokens: int = Field(128, ge=1, description="New tokens per prompt.")
    format: Literal["json", "tuple"] = Field("json", description="The answer format the prompts ask for.")
    prompt_format: PromptFormatName = Field("alpaca", description=PROMPT_FORMAT_HELP)
    max_chars: int = Field(400, ge=16, description="Characters of text per prompt (longer texts are chunked).")
    shards: str | None = Field(None, description="Corpus out_dir or shard dir for perplexity; null: no perplexity.")
    ppl_max_rows: int = Field(0, ge=0, description="Perplexity over the first N rows (0: every row).")
    ppl_batch_size: int = Field(8, ge=1, description="Rows per perplexity forward pass.")
    out_dir: str = Field("artifacts/eval", description="Output: report.json and predictions.jsonl.")
    device: str = Field("cpu", description="torch device (cpu, cuda).")
    dtype: str = Field("float32", description="torch dtype of the model (float32, float16, bfloat16).")
    edit: EvaluateEditConfig | None = Field(
        None,
        description="Knowledge-editing metrics (reliability, generalization, locality, portability) "
        "before and after an edit; null: none.",
    )

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.gold and not self.shards and not self.edit:
            raise ValueError("give gold (extraction scores), shards (perplexity) and/or edit (editing metrics)")
        if self.edit is not None:
            for key in ("requests", "edit"):
                if getattr(self.edit, key):
                    object.__setattr__(self.edit, key, _absolute(getattr(self.edit, key)))
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

    inputs: list[str] = Field(
        default_factory=list,
        description="Alpaca .json / .jsonl files or directories of them (this and / or ie_records).",
    )
    ie_records: str | None = Field(
        None, description="IE records (jsonl), built into instructions with kg2instruct first (needs schema)."
    )
    schema_: str | None = Field(None, alias="schema", description="Label schema JSON for ie_records.")
    tokenizer: str = Field(description="HF tokenizer directory.")
    cutoff_len: int = Field(512, ge=8, description="Tokens per prompt + response; longer rows are cut (KnowLM: 512).")
    train_on_inputs: bool = Field(
        False, description="false: the prompt's labels are -100 (only the response is learned)."
    )
    val_set_size: int = Field(2000, ge=0, description="Validation rows, whole source records (KnowLM: 2000).")
    seed: int = Field(0, description="Seed of the split hash and the instruction builder's stream.")
    neg_ratio: float = Field(
        0.15,
        ge=0,
        le=1,
        description="kg2instruct negative sampling: the chance that "
        "each schema label the record lacks is asked for too.",
    )
    out_dir: str = Field(
        "artifacts/instructions", description="Output: train/, validation/, quarantine/, manifest.json."
    )
    rows_per_shard: int = Field(10000, ge=1, description="Rows per Arrow shard file.")
    num_tokenizers: int = Field(1, ge=1, description="Tokenizer actors in the Ray Data pool.")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> InstructionsConfig:
        if not self.inputs and not self.ie_records:
            raise ValueError("give inputs (alpaca json/jsonl) and/or ie_records (+ schema)")
        if self.ie_records and not self.schema_:
            raise ValueError("ie_records needs schema (the label schema JSON)")
        object.__setattr__(self, "inputs", [_absolute(p) for p in self.inputs])
        for key in ("ie_records", "schema_", "tokenizer", "out_dir"):
            if getattr(self, key):
                object.__setattr__(self, key, _absolute(getattr(self, key)))
        return self


# --------------------------------------------------------------------------- instruction generation
GeneratorName = Literal["self_instruct", "evol_instruct", "backtranslation"]
EvolutionName = Literal["breadth", "constraints", "deepen", "concretizing", "reasoning"]


class GenerateConfig(Strict):
    """``jobs/generate_instructions.py``: new instructions from an OpenAI-compatible endpoint, as
    EasyInstruct's generators make them (Self-Instruct, Evol-Instruct, backtranslation).

    Writes ``out_dir/generated.jsonl`` (alpaca records with their provenance, appended as they
    arrive), ``out_dir/tasks.jsonl`` (one line per finished task: the resume ledger),
    ``out_dir/quarantine.jsonl`` and ``out_dir/manifest.json`` (see ``knowlm_ray.curate.generate``).
    """

    generator: GeneratorName = Field(
        description="self_instruct: new tasks from few-shot seed instructions, kept when their ROUGE-L "
        "against every instruction so far is at most rouge_threshold; evol_instruct: an in-depth or in-breadth "
        "rewrite of each input instruction; backtranslation: an instruction written for each input text."
    )
    inputs: list[str] = Field(
        min_length=1,
        description="Alpaca .json / .jsonl files (self_instruct: the seed tasks; evol_instruct: the "
        "instructions to evolve) or jsonl texts (backtranslation, see text_field).",
    )
    text_field: list[str] = Field(
        ["text", "content", "output"],
        description="backtranslation: the first of these fields a line has is its text.",
    )
    out_dir: str = Field(
        "artifacts/generated", description="Output: generated.jsonl, tasks.jsonl, quarantine.jsonl, manifest.json."
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="The endpoint's OpenAI base URL (knowlm serve: http://HOST:PORT/v1)."
    )
    model: str | None = Field(None, description="Model name sent in each request; null: the first of GET /v1/models.")
    api: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: POST /chat/completions, the prompt as one user message; completions: POST /completions.",
    )
    api_key: str | None = Field(None, description="Bearer token; null: the environment variable api_key_env.")
    api_key_env: str = Field("OPENAI_API_KEY", description="The environment variable that holds the key.")
    num_tasks: int = Field(
        100,
        ge=0,
        description="self_instruct: generation requests; evol_instruct / backtranslation: the first N "
        "input records (0: all of them).",
    )
    num_prompt_instructions: int = Field(
        8, ge=1, description="self_instruct: seed instructions shown in each prompt (Self-Instruct: 8)."
    )
    rouge_threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        description="self_instruct: a new instruction whose ROUGE-L F1 against any seed or kept "
        "instruction is above this is dropped (Self-Instruct: 0.7).",
    )
    evolutions: list[EvolutionName] = Field(
        ["breadth", "constraints", "deepen", "concretizing", "reasoning"],
        min_length=1,
        description="evol_instruct: the rewrites each instruction draws one of (seeded per task).",
    )
    answer: bool = Field(
        True,
        description="self_instruct / evol_instruct: ask the endpoint for each new instruction's output "
        "(false: output stays empty).",
    )
    max_chars: int = Field(2000, ge=1, description="backtranslation: longer texts are skipped (counted).")
    min_score: int | None = Field(
        None,
        ge=1,
        le=5,
        description="backtranslation: the endpoint rates each instruction and text 1-5 (Humpback's "
        "self-curation prompt) and pairs rated below this are dropped; null: no rating.",
    )
    max_tokens: int = Field(512, ge=1, description="New tokens per generation request.")
    answer_max_tokens: int = Field(512, ge=1, description="New tokens per answer request.")
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="null: the generator's own (self_instruct 0.5, evol_instruct 1, backtranslation 0).",
    )
    top_p: float | None = Field(
        None,
        gt=0,
        le=1,
        description="null: the generator's own (self_instruct 0.5, evol_instruct 0.95, backtranslation 1).",
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, description="Retries of a request answered 429 / 5xx, timed out or not connected."
    )
    retry_backoff_s: float = Field(
        1.0, ge=0, description="First retry's wait; doubled each retry (jittered; Retry-After wins when longer)."
    )
    retry_max_backoff_s: float = Field(30.0, ge=0, description="The longest wait between two tries.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds for one HTTP request.")
    seed: int = Field(0, description="Seeds each task's sampled seed instructions and evolution (task ids are stable).")

    @model_validator(mode="after")
    def _paths_absolute(self) -> GenerateConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url {self.base_url!r}: give an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)"
            )
        object.__setattr__(self, "inputs", [_absolute(p) for p in self.inputs])
        object.__setattr__(self, "out_dir", _absolute(self.out_dir))
        return self
