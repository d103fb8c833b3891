"""The keys' second moment C = E[k k^T] that ROME (``mom2_adjustment``) and MEMIT weigh keys by.

In order: the statistics cached by ``jobs/edit_stats.py`` for the module (``knowlm_ray.edit.stats``),
the statistics computed now from ``--stats-data``, or the identity. For MEMIT the identity is
scaled to the edit keys' mean square (``mean ||k||^2 / dim``) so that ``mom2_update_weight``
weighs it as it would a measured C. ``source`` says which was used: ``edit apply`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def key_covariance(model_dir, module_name: str, *, use: bool, min_samples: int, stats_data=None) -> Covariance:
    """C for ``module_name``'s keys (see the module docstring)."""
    if not use:
        return Covariance(None, "identity (mom2_adjustment: false)")
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
