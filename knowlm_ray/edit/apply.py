"""``knowlm edit apply``: requests in, an edit directory out (never a copy of the model).

``edit_model`` runs a method on a loaded model in place and checks what it did; ``apply_edits``
loads the model, runs it and writes the low-rank deltas with ``models.edit_delta.write_edit``
against the weights they were computed on.

Refused, naming the record (file:line) or the key: a subject not in its prompt or an empty target
(``requests``), a layer the model lacks, ROME with more than one layer, and an edit that changed
nothing: a zero or non-finite delta, or a request whose target's probability did not rise (the
silent failure EasyEdit's users report for batch edits).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_ray.edit.metrics import target_logprobs
from knowlm_ray.edit.presets import check_layers, default_layers, preset_for
from knowlm_ray.edit.requests import load_requests
from knowlm_ray.edit.settings import load_settings
from knowlm_ray.errors import MissingPathError, UserError

METHODS = ("rome", "memit", "ft")


class EditUnchangedError(UserError, ValueError):
    """The edit did not change what it was asked to change."""


@dataclass
class EditOutcome:
    deltas: dict[str, tuple[Any, Any]]
    base: dict[str, Any]
    layers: list[int]
    covariance: dict[int, str] = field(default_factory=dict)
    logprob_before: list[float] = field(default_factory=list)
    logprob_after: list[float] = field(default_factory=list)


def load_model(model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model in eval mode, tokenizer) from an HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise MissingPathError(f"--model: no HF model directory (config.json) at {path}")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tok


def _layers(method: str, settings, depth: int) -> list[int]:
    layers = check_layers(
        list(settings.layers) if settings.layers is not None else default_layers(method, depth),
        depth,
        f"{method}.layers",
    )
    if method == "rome" and len(layers) != 1:
        raise UserError(
            f"rome.layers: ROME edits one layer, {len(layers)} given ({layers}); MEMIT spreads over several"
        )
    return layers


def edit_model(
    model, tok, requests, method: str, settings, *, model_dir=None, stats_data=None, log=print
) -> EditOutcome:
    """Run ``method`` on ``model`` in place and check that every request's target became likelier."""
    from knowlm_ray.edit import tracing
    from knowlm_ray.edit.covariance import key_covariance

    preset = preset_for(model.config)
    layers = _layers(method, settings, model.config.num_hidden_layers)
    names = [preset.weight(x) for x in layers]
    base = {n: model.get_parameter(n).detach().clone() for n in names}
    pairs = [(r.prompt, r.target_new) for r in requests]
    before = target_logprobs(model, tok, pairs)
    out = EditOutcome({}, base, layers, logprob_before=before)
    if method == "ft":
        from knowlm_ray.edit.ft import ft

        out.deltas = ft(model, tok, requests, preset, layers, settings, log=log)
    else:
        covs = {}
        for layer in layers:
            covs[layer] = key_covariance(
                model_dir,
                preset.mlp_out.format(layer),
                use=settings.mom2_adjustment,
                min_samples=settings.mom2_n_samples,
                stats_data=stats_data,
                model=model,
                tok=tok,
            )
            out.covariance[layer] = covs[layer].source
            log(f"[edit] layer {layer} key covariance: {covs[layer].source}")
        templates = tracing.context_templates(model, tok, settings.context_template_length_params, settings.seed)
        if method == "rome":
            from knowlm_ray.edit.rome import rome

            out.deltas = rome(model, tok, requests, preset, layers, templates, settings, covs, log=log)
        else:
            from knowlm_ray.edit.memit import memit

            out.deltas = memit(model, tok, requests, preset, layers, templates, settings, covs, log=log)
    for name, (u, v) in out.deltas.items():
        norm = (u.double() @ v.double().T).norm().item()
        if not math.isfinite(norm) or norm == 0.0:
            raise EditUnchangedError(f"{method} left {name} unchanged (delta norm {norm}): nothing was edited")
    out.logprob_after = target_logprobs(model, tok, pairs)
    still = [
        r.where for r, b, a in zip(requests, before, out.logprob_after, strict=True) if not a > b + 1e-3
    ]  # under 1e-3 nats: float noise
    if still:
        raise EditUnchangedError(
            f"{method} did not make the target likelier for {len(still)} of {len(requests)} requests: "
            f"{', '.join(still[:5])}{' ...' if len(still) > 5 else ''} (try other layers or settings)"
        )
    return out


def apply_edits(
    model_dir: str | Path,
    requests_path: str | Path,
    method: str,
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    overrides: dict | None = None,
    stats_data: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    log=print,
) -> dict[str, Any]:
    """Edit the model at ``model_dir`` with the requests and write the edit to ``out_dir``."""
    from knowlm_ray.models.edit_delta import write_edit

    t0 = time.perf_counter()
    settings = load_settings(method, config, overrides)
    rs = load_requests(requests_path)
    for q in rs.quarantined:
        log(f"[edit] quarantined {q}")
    model, tok = load_model(model_dir, device, dtype)
    log(f"[edit] {method}: {len(rs.requests)} requests ({', '.join(f'{n} {k}' for k, n in rs.formats.items())})")
    outcome = edit_model(model, tok, rs.requests, method, settings, model_dir=model_dir, stats_data=stats_data, log=log)
    recorded = settings.model_dump(mode="json")
    recorded["layers"] = outcome.layers
    recorded["covariance"] = {str(k): v for k, v in outcome.covariance.items()}
    path = write_edit(
        out_dir,
        outcome.deltas,
        outcome.base,
        method=method,
        settings=recorded,
        requests=[r.record() for r in rs.requests],
        model_dir=model_dir,
    )
    size = (Path(path) / "edit.safetensors").stat().st_size
    summary = {
        "out": str(path),
        "method": method,
        "requests": len(rs.requests),
        "quarantined": len(rs.quarantined),
        "layers": outcome.layers,
        "covariance": recorded["covariance"],
        "params": {n: int(u.shape[1]) for n, (u, _) in outcome.deltas.items()},
        "edit_bytes": size,
        "target_logprob_before": sum(outcome.logprob_before) / len(rs.requests),
        "target_logprob_after": sum(outcome.logprob_after) / len(rs.requests),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return summary
