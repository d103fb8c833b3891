"""The keys' second moment C = E[k k^T] that ROME (``mom2_adjustment``) and MEMIT weigh keys by.

In order: the statistics cached by ``jobs/edit_stats.py`` for the module (``knowlm_ray.edit.stats``),
the statistics computed now from ``--stats-data`` (corpus shards: through ``edit.stats``, which
caches them; a ``.txt`` or ``.jsonl`` file: in this process over its lines, not cached), or the
identity. For MEMIT the identity is
scaled to the edit keys' mean square (``mean ||k||^2 / dim``) so that ``mom2_update_weight``
weighs it as it would a measured C. ``source`` says which was used: ``edit apply`` prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from knowlm_ray.errors import InputError, MissingPathError


@dataclass
class Covariance:
    matrix: torch.Tensor | None  # None: the identity
    source: str  # "cached (N samples)", "computed from DATA (N samples)", "identity"

    def solve(self, k: torch.Tensor) -> torch.Tensor:
        """C^-1 k (float64 inside; a small ridge keeps an under-sampled C invertible)."""
        if self.matrix is None:
            return k.clone()
        c = self.matrix.double()
        ridge = 1e-6 * c.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(c.shape[0], dtype=c.dtype)
        return torch.linalg.solve(c + ridge * eye, k.double()).to(k.dtype)

    def scaled(self, keys: torch.Tensor) -> torch.Tensor:
        """[in, in] float64: C itself, or the identity times the keys' mean square per dimension."""
        if self.matrix is not None:
            return self.matrix.double()
        scale = keys.double().pow(2).sum(-1).mean() / keys.shape[-1]
        return scale * torch.eye(keys.shape[-1], dtype=torch.float64)


def text_lines(path: Path) -> list[str]:
    """The texts of a .txt file (one a line) or a .jsonl file (its ``text`` fields)."""
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if path.suffix != ".jsonl":
        return lines
    out = []
    for x in lines:
        try:
            obj = json.loads(x)
        except json.JSONDecodeError:
            continue  # a malformed line is skipped, as the corpus pipeline quarantines it
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            out.append(obj["text"])
    return out


def texts_second_moment(model, tok, module_name: str, texts: list[str]) -> tuple[torch.Tensor, int]:
    """(E[k k^T] float32, tokens) of ``module_name``'s inputs over every token of ``texts``."""
    from knowlm_ray.edit.tracing import hook

    total, count = None, 0
    device = next(model.parameters()).device

    def grab(module, inputs, output):
        nonlocal total, count
        k = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
        total = k.T @ k if total is None else total + k.T @ k
        count += k.shape[0]

    with torch.no_grad(), hook(model, module_name, grab):
        for t in texts:
            model(input_ids=torch.tensor([tok(t).input_ids], device=device))
    if total is None:
        raise InputError("--stats-data: no text in it")
    return (total / count).float().cpu(), count


def key_covariance(
    model_dir, module_name: str, *, use: bool, min_samples: int, stats_data=None, model=None, tok=None
) -> Covariance:
    """C for ``module_name``'s keys (see the module docstring); ``model``/``tok``: the loaded
    model, for a text ``stats_data``."""
    if not use:
        return Covariance(None, "identity (mom2_adjustment: false)")
    if stats_data is not None and Path(stats_data).suffix in (".txt", ".jsonl"):
        if not Path(stats_data).is_file():
            raise MissingPathError(f"--stats-data: no such file: {stats_data}")
        c, n = texts_second_moment(model, tok, module_name, text_lines(Path(stats_data)))
        return Covariance(c, f"computed from {stats_data} ({n} tokens)")
    try:  # the statistics job; absent in a checkout without it
        from knowlm_ray.edit import stats
    except ImportError:
        stats = None
    if stats is not None:
        found = stats.load_cached_stats(model_dir, module_name, min_samples=min_samples)
        if found is not None:
            c, n = found
            return Covariance(c.float(), f"cached ({n} samples)")
        if stats_data is not None:
            c, n = stats.compute_stats(model_dir, module_name, stats_data, min_samples)
            return Covariance(c.float(), f"computed from {stats_data} ({n} samples)")
    return Covariance(None, "identity (no cached statistics; give --stats-data or run jobs/edit_stats.py)")
