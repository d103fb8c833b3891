"""ROME: a rank-one update of one MLP output projection per fact (Meng et al. 2022, EasyEdit's
``rome_main``).

For a request: the key k* (the projection's input at the subject's last token, averaged over
random prefixes), the value v* (``tracing.optimize_value`` at the projection's output) and the
update ``W += (v* - W k) (C^-1 k*)^T / ((C^-1 k*)^T k)`` with ``k`` the key in the edit prompt
itself, so that ``W' k = v*`` there exactly. Several requests are edited one after another, each
on the model the previous ones left; their rank-one factors are concatenated into one delta per
parameter (delta W = sum of u_i v_i^T = U V^T), which is what the edit file stores.
"""

from __future__ import annotations

import torch

from knowlm_ray.edit import tracing
from knowlm_ray.edit.covariance import Covariance


def rome_one(model, tok, request, module: str, templates: list[str], settings, cov: Covariance):
    """(u [out, 1], v [in, 1], v*'s final NLL) for one request, float32; the model is not changed."""
    k_star = tracing.keys(model, tok, module, [request], templates, settings.fact_token)[0]
    left = cov.solve(k_star)
    left = left / left.norm()
    v_star, _, nll = tracing.optimize_value(model, tok, request, module, templates, settings)
    k = tracing.read_at(
        model, tok, module, [(request.template, request.subject)], side="in", fact_token=settings.fact_token
    )[0]
    w = model.get_submodule(module).weight
    current = (w.float() @ k.to(w.device)).cpu()
    right = (v_star.cpu() - current) / torch.dot(k, left)
    return right[:, None], left[:, None], nll


def rome(model, tok, requests, preset, layers: list[int], templates, settings, covs, log=print):
    """Edit ``requests`` one after another into the model (in place); returns {weight name: (U, V)}."""
    from knowlm_ray.models.edit_delta import add_delta

    (layer,) = layers[:1]
    module = preset.mlp_out.format(layer)
    name = preset.weight(layer)
    us, vs = [], []
    for i, r in enumerate(requests, 1):
        u, v, nll = rome_one(model, tok, r, module, templates, settings, covs[layer])
        p = model.get_parameter(name)
        with torch.no_grad():
            p.copy_(add_delta(p.data, u.to(p.device), v.to(p.device)))
        us.append(u)
        vs.append(v)
        log(f"[edit] rome {i}/{len(requests)}: {r.subject!r} -> {r.target_new!r} (layer {layer}, v* NLL {nll:.3f})")
    return {name: (torch.cat(us, 1), torch.cat(vs, 1))}
