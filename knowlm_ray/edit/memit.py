"""MEMIT: many facts at once, the change spread over a range of layers (Meng et al. 2023,
EasyEdit's ``memit_main``).

For each request a target z (the residual stream after the last edited layer, at the subject's
last token) is found by ``tracing.optimize_value``. Then, layer by layer from the first: the
keys K [in, n] (averaged over random prefixes), the residual still missing at the last layer
``z - z_now``, its share ``1 / (layers left)``, and the least-squares update
``delta = R ((w C + K K^T)^-1 K)^T`` written as the factors U = R [out, n] and
V = (w C + K K^T)^-1 K [in, n]: rank n per layer, stored as is. The model is updated before the
next layer is measured.
"""

from __future__ import annotations

import torch

from knowlm_ray.edit import tracing
from knowlm_ray.edit.presets import REFERENCE_KEY_DIM


def update_weight(settings, key_dim: int) -> float:
    """``mom2_update_weight``, or EasyEdit's 15000 scaled from LLaMA-7B's MLP width to ``key_dim``."""
    if settings.mom2_update_weight is not None:
        return settings.mom2_update_weight
    return 15000.0 * key_dim / REFERENCE_KEY_DIM


def memit(model, tok, requests, preset, layers: list[int], templates, settings, covs, log=print):
    """Edit all ``requests`` into the model at once (in place); returns {weight name: (U, V)}."""
    from knowlm_ray.models.edit_delta import add_delta

    z_module = preset.layer.format(layers[-1])
    zs, nlls = [], []
    for i, r in enumerate(requests, 1):
        z, _, nll = tracing.optimize_value(model, tok, r, z_module, templates, settings)
        zs.append(z)
        nlls.append(nll)
        if i % 5 == 0 or i == len(requests):
            log(f"[edit] memit targets {i}/{len(requests)} (mean NLL {sum(nlls) / len(nlls):.3f})")
    zs = torch.stack(zs, 1).double()  # [d, n]
    plain = [(r.template, r.subject) for r in requests]
    deltas = {}
    for i, layer in enumerate(layers):
        module = preset.mlp_out.format(layer)
        k = tracing.keys(model, tok, module, requests, templates, settings.fact_token).double().T  # [in, n]
        now = (
            tracing.read_at(model, tok, z_module, plain, side="out", fact_token=settings.fact_token).double().T
        )  # [d, n]
        resid = (zs - now) / (len(layers) - i)
        c = covs[layer].scaled(k.T)
        w = update_weight(settings, k.shape[0])
        adj = torch.linalg.solve(w * c + k @ k.T, k)  # [in, n]
        u, v = resid.float(), adj.float()
        name = preset.weight(layer)
        p = model.get_parameter(name)
        with torch.no_grad():
            p.copy_(add_delta(p.data, u.to(p.device), v.to(p.device)))
        deltas[name] = (u, v)
        log(f"[edit] memit layer {layer}: residual {resid.norm(dim=0).mean():.3f}, update {(u @ v.T).norm():.3f}")
    return deltas
