"""The settings of each editing method (``knowlm edit apply --config C.yaml``), with EasyEdit's
LLaMA-7B hyper-parameters as defaults where they carry over to any size.

``layers: null`` (the default) picks the edited layers from the model's depth
(``presets.default_layers``). This module imports neither torch nor Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from knowlm_ray.config import ConfigError, Strict


class ValueSettings(Strict):
    """How ROME and MEMIT find the vector v* that makes the model say the new target."""

    layers: list[int] | None = Field(None, description="Edited layers; null: chosen from the model's depth.")
    v_num_grad_steps: int = Field(25, ge=1, description="Adam steps optimising v* (EasyEdit: 25).")
    v_lr: float = Field(0.5, gt=0, description="Adam learning rate for v* (EasyEdit: 0.5).")
    v_weight_decay: float = Field(1e-3, ge=0, description="Penalty on ||delta|| / ||v||^2 (EasyEdit: 1e-3).")
    clamp_norm_factor: float = Field(
        4.0, gt=0, description="||delta|| is clamped to this times the original value's norm (EasyEdit: 4)."
    )
    kl_factor: float = Field(
        0.0625,
        ge=0,
        description="Weight of the KL term keeping the next-token distribution after '{subject} is a' (EasyEdit: 0.0625).",
    )
    context_template_length_params: list[tuple[int, int]] = Field(
        [(5, 10), (10, 10)],
        description="Random prefixes the model writes for keys and v*: [[tokens, count], ...] (EasyEdit: [[5,10],[10,10]]).",
    )
    mom2_adjustment: bool = Field(
        True,
        description="Use the keys' second moment C (cached by `knowlm edit-stats`/jobs/edit_stats.py or "
        "computed from --stats-data); without it, or with false, C is the identity (EasyEdit's LLaMA ROME preset: false).",
    )
    mom2_n_samples: int = Field(1000, ge=1, description="Fewest corpus rows a cached C must be measured on to be used.")
    fact_token: Literal["subject_last", "last"] = Field(
        "subject_last",
        description="Where the key is read and the value written: the subject's last token (EasyEdit's "
        "presets) or the prompt's last token.",
    )
    seed: int = Field(0, description="Seed of the random prefixes.")


class RomeSettings(ValueSettings):
    """ROME: one rank-one update of one layer's MLP output projection per request; several
    requests are edited one after another, each on the model the previous ones left."""


class MemitSettings(ValueSettings):
    """MEMIT: all requests at once, the change spread over a range of layers."""

    mom2_update_weight: float | None = Field(
        None,
        gt=0,
        description="Weight of C against the new keys (EasyEdit: 15000 for LLaMA-7B's 11008-wide MLP); "
        "null: 15000 scaled by the model's MLP width / 11008.",
    )


class FtSettings(Strict):
    """FT-L: fine-tune one layer's MLP output projection on the targets under a norm bound."""

    layers: list[int] | None = Field(None, description="Fine-tuned layers; null: chosen from the model's depth.")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate (EasyEdit's LLaMA-7B: 5e-4).")
    num_steps: int = Field(50, ge=1, description="Passes over the requests (EasyEdit: 25).")
    norm_constraint: float = Field(
        1e-2,
        ge=0,
        description="Bound on the change: each element within +-this (linf) or the Frobenius norm of the "
        "change within this times the weight's (l2); 0: unbounded (EasyEdit's LLaMA-7B: 5e-5, linf).",
    )
    constraint: Literal["linf", "l2"] = Field("linf", description="Which norm norm_constraint bounds.")
    rank: int = Field(
        0, ge=0, description="Rank the change is stored at (truncated SVD); 0: the smallest keeping rank_energy."
    )
    rank_energy: float = Field(
        0.99, gt=0, le=1, description="With rank 0: the share of the change's squared Frobenius norm kept."
    )


SETTINGS = {"rome": RomeSettings, "memit": MemitSettings, "ft": FtSettings}


def load_settings(method: str, path: str | Path | None, overrides: dict | None = None):
    """The method's settings from a YAML file (or defaults) and ``key=value`` overrides."""
    data = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: no such file: {p}")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of {method} settings")
    data.update(overrides or {})
    try:
        return SETTINGS[method].model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(top)'}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{where}{method} settings: {msgs}") from None
