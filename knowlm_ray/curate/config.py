"""The config of ``jobs/curate_instructions.py`` (no torch, no ray: ``--help`` stays fast).

``selectors`` is a list applied in order; each item is one selector, picked by its ``name``
(a pydantic discriminated union), with its own thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from knowlm_ray.config import Strict

Field3 = Literal["instruction", "input", "output"]


class ExactDedup(Strict):
    """Drop a record whose chosen fields, normalised (NFKC, case-folded, whitespace collapsed),
    equal those of an earlier record (input order: the first one is kept)."""

    name: Literal["exact_dedup"] = Field(description="exact_dedup")
    fields: list[Field3] = Field(
        ["instruction", "input", "output"], min_length=1, description="The fields compared, joined."
    )


class RougeDedup(Strict):
    """EasyInstruct's RougeSelector at scale: drop a record whose ROUGE-L F1 with an earlier kept
    record is above threshold, compared only on MinHash LSH candidate pairs."""

    name: Literal["rouge_dedup"] = Field(description="rouge_dedup")
    threshold: float = Field(0.7, gt=0, le=1, description="ROUGE-L F1 above which the later record is dropped.")
    fields: list[Field3] = Field(
        ["instruction", "input"], min_length=1, description="The fields compared (joined by a newline)."
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations per record.")
    bands: int = Field(
        0, ge=0, description="LSH bands; 0: derived from lsh_threshold (datasketch's optimum, recall-weighted)."
    )
    rows: int = Field(0, ge=0, description="LSH rows per band (with bands; 0: derived).")
    lsh_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Token-set Jaccard the LSH aims at (bands and rows derived from it); ROUGE-L F1 > 0.7 implies "
        "a token Jaccard of about 0.54 or more. The default's recall and ROUGE-L savings: BENCHMARKS.md, "
        "Instruction curation.",
    )
    max_bucket_compare: int = Field(
        64, ge=2, description="A bucket of more records pairs each with its first this many only."
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> RougeDedup:
        if bool(self.bands) != bool(self.rows):
            raise ValueError("rouge_dedup: bands and rows go together (both 0 = derived)")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"rouge_dedup: bands * rows = {self.bands * self.rows} > num_perm {self.num_perm}")
        return self


class LengthSelector(Strict):
    """Keep a record whose field has between min_chars and max_chars characters."""

    name: Literal["length"] = Field(description="length")
    field: Field3 = Field("output", description="The field measured.")
    min_chars: int = Field(1, ge=0, description="Fewer characters drop the record.")
    max_chars: int = Field(100_000, ge=1, description="More characters drop the record.")


class MTLDSelector(Strict):
    """Lexical diversity (McCarthy & Jarvis's MTLD, via lexicalrichness) of a field's words
    (one word per CJK character); keep min <= MTLD <= max (EasyInstruct: 8-22)."""

    name: Literal["mtld"] = Field(description="mtld")
    field: Field3 = Field("output", description="The field measured.")
    min: float = Field(8.0, ge=0, description="Lower MTLD drops the record (repetitive).")
    max: float = Field(22.0, gt=0, description="Higher MTLD drops the record.")
    ttr_threshold: float = Field(0.72, gt=0, lt=1, description="MTLD's factor TTR threshold (McCarthy: 0.72).")


class PerplexitySelector(Strict):
    """Perplexity of the response given the alpaca prompt under a local causal LM (a Ray Data
    actor pool holding the model); drop above max (EasyInstruct: 200)."""

    name: Literal["perplexity"] = Field(description="perplexity")
    model: str = Field(description="HF causal LM directory (the tiny model in tests).")
    max: float = Field(200.0, gt=0, description="Higher perplexity drops the record.")
    batch_size: int = Field(8, ge=1, description="Records per forward pass.")
    max_tokens: int = Field(512, ge=8, description="Prompt + response tokens kept (longer ones are cut).")
    num_actors: int = Field(1, ge=1, description="Model replicas in the actor pool.")
    cpus_per_actor: float = Field(0.5, gt=0, description="CPUs per actor (< 1 on small boxes: Ray Data needs one).")
    device: str = Field("cpu", description="torch device (cpu, cuda).")

    @model_validator(mode="after")
    def _model_absolute(self) -> PerplexitySelector:
        if "://" not in self.model:
            object.__setattr__(self, "model", str(Path(self.model).expanduser().resolve()))
        return self


class CIRSSelector(Strict):
    """Code complexity of the answer's Python code (knowlm_ray/curate/cirs.py): keep min <= CIRS
    <= max. Records without parseable code in the answer get CIRS 0 and are kept unless
    require_code."""

    name: Literal["cirs"] = Field(description="cirs")
    field: Field3 = Field("output", description="The field whose code blocks are scored.")
    min: float = Field(0.0, ge=0, description="Lower CIRS drops a record with code (trivial code).")
    max: float = Field(1e9, gt=0, description="Higher CIRS drops the record (too complex).")
    require_code: bool = Field(False, description="Drop records whose field holds no parseable Python code.")


class LanguageSelector(Strict):
    """Language identification (py3langid, its model inside the wheel) of the chosen fields;
    keep the listed languages."""

    name: Literal["language"] = Field(description="language")
    langs: list[str] = Field(["zh", "en"], min_length=1, description="ISO 639-1 codes kept.")
    fields: list[Field3] = Field(
        ["instruction", "input", "output"], min_length=1, description="The fields whose joined text is identified."
    )


class PIISelector(Strict):
    """E-mail addresses, phone numbers and IP addresses (knowlm_ray/corpus/pii.py) in any string of
    the record: masked (<EMAIL>, <PHONE>, <IP>) or the record dropped."""

    name: Literal["pii"] = Field(description="pii")
    action: Literal["mask", "drop"] = Field("mask", description="mask: replace in place; drop: drop the record.")


Selector = Annotated[
    ExactDedup
    | RougeDedup
    | LengthSelector
    | MTLDSelector
    | PerplexitySelector
    | CIRSSelector
    | LanguageSelector
    | PIISelector,
    Field(discriminator="name"),
]


class CurateConfig(Strict):
    """``jobs/curate_instructions.py``: a chain of instruction selectors on Ray Data.

    Writes ``out_dir/kept.jsonl``, ``out_dir/dropped.jsonl``, ``out_dir/quarantine/`` and
    ``out_dir/manifest.json`` (see ``knowlm_ray.curate.pipeline``).
    """

    inputs: list[str] = Field(
        min_length=1,
        description="Instruction files (.jsonl, or a .json list) or directories of them: alpaca, IEPile "
        "or ShareGPT-style (conversations / messages) records.",
    )
    out_dir: str = Field(
        "artifacts/curated",
        description="Output directory (replaced whole): kept.jsonl, dropped.jsonl, quarantine/, manifest.json.",
    )
    seed: int = Field(0, description="Seed of the MinHash permutations (and of anything else random).")
    selectors: list[Selector] = Field(
        default_factory=lambda: [ExactDedup(name="exact_dedup")],
        description="Selectors applied in order, each a mapping picked by its name; the keys of each kind are "
        "listed as selectors[name=KIND].",
    )
    read_bytes: int = Field(
        8 << 20,
        ge=1 << 16,
        description="Largest byte range of a .jsonl file one read task parses (smaller ranges when the "
        "input is small: about 4 per CPU).",
    )

    @model_validator(mode="after")
    def _paths_absolute(self) -> CurateConfig:
        object.__setattr__(self, "out_dir", str(Path(self.out_dir).expanduser().resolve()))
        object.__setattr__(self, "inputs", [str(Path(p).expanduser().resolve()) for p in self.inputs])
        return self
