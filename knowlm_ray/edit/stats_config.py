"""The config of ``jobs/edit_stats.py`` (imports neither torch nor Ray: ``--help`` stays fast)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from knowlm_ray.config import ConfigError, Strict

MODULE_TEMPLATE = "model.layers.{layer}.mlp.down_proj"
CACHE_ENV = "KNOWLM_STATS_CACHE"


def default_cache_dir() -> Path:
    """$KNOWLM_STATS_CACHE, else ~/.cache/knowlm/edit_stats: where the job writes and edit apply reads."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "knowlm" / "edit_stats"


def _absolute(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser().resolve())


class EditStatsConfig(Strict):
    """``jobs/edit_stats.py``: E[k k^T] of the inputs of MLP output projections over corpus shards.

    ROME's and MEMIT's ``mom2`` statistics: for each module, the second moment of its input vectors
    over every token of the first ``n_samples`` corpus rows, computed by a Ray Data actor pool and
    cached by (model checksum, module, samples) where ``knowlm edit apply`` finds them.
    """

    model: str = Field(description="HF model directory whose layers' keys are measured.")
    data: str = Field(description="Corpus shards: a prepare_corpus out_dir, its shards/ dir (Arrow IPC).")
    layers: list[int] = Field(
        default_factory=list,
        description="Layer indices (MEMIT: [4, 5, 6, 7, 8]); each becomes module_template's module. "
        "Empty: modules must name them.",
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Module names measured besides layers' (e.g. model.layers.5.mlp.down_proj).",
    )
    module_template: str = Field(
        MODULE_TEMPLATE, description="The module of a layer index: {layer} is replaced by the index."
    )
    n_samples: int = Field(
        100000,
        ge=0,
        description="Corpus rows measured, the first ones in shard order (EasyEdit's mom2_n_samples); 0: every row.",
    )
    max_tokens: int = Field(0, ge=0, description="Cut each row to this many tokens (0: rows as they are).")
    block_rows: int = Field(
        256, ge=1, description="Rows per block: the unit of work, of the partial sums on disk and of resume."
    )
    batch_rows: int = Field(8, ge=1, description="Rows in one forward pass.")
    num_actors: int = Field(2, ge=1, description="Model replicas in the Ray Data actor pool.")
    cpus_per_actor: float = Field(
        0.5, gt=0, description="CPUs per actor (< 1 on small boxes: Ray Data needs a CPU too)."
    )
    threads_per_actor: int = Field(1, ge=1, description="torch threads in each actor.")
    device: str = Field("cpu", description="torch device of each actor's model (cpu, cuda).")
    dtype: str = Field(
        "float32", description="torch dtype of the model (float32, float16, bfloat16); sums are float64."
    )
    use_gpu: bool = Field(False, description="One GPU per actor (device is then cuda).")
    cache_dir: str | None = Field(
        None,
        description="Where the statistics are cached (and the partial sums of a run kept until it ends); "
        "null: $KNOWLM_STATS_CACHE, else ~/.cache/knowlm/edit_stats. knowlm edit apply reads the same. On a "
        "cluster: storage every node sees (actors write the partial sums).",
    )
    fold_every_s: float = Field(
        60.0,
        ge=0,
        description="Seconds between folding finished blocks' partial sums into the running total "
        "on disk (block files are deleted once folded).",
    )

    @model_validator(mode="after")
    def _check(self) -> EditStatsConfig:
        for key in ("model", "data"):
            object.__setattr__(self, key, _absolute(getattr(self, key)))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", _absolute(self.cache_dir))
        if "{layer}" not in self.module_template:
            raise ConfigError(f"module_template: {self.module_template!r} has no {{layer}}")
        if not self.layers and not self.modules:
            raise ConfigError("layers: name at least one layer (or modules: a module name)")
        return self

    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def log_file(self) -> Path:
        """The job's log (the quiet console's): CACHE/edit_stats.log."""
        return self.cache_path() / "edit_stats.log"

    def module_names(self) -> list[str]:
        names = [self.module_template.format(layer=i) for i in self.layers] + list(self.modules)
        return list(dict.fromkeys(names))
