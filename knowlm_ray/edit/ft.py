"""FT-L: fine-tune one layer's MLP output projection on the new targets under a norm bound
(EasyEdit's ``ft_main`` with ``objective_optimization: target_new``), the baseline.

Adam on the projection alone, the loss the targets' teacher-forced NLL after their prompts; after
each step the change is projected back into the bound (``linf``: each element within
+-norm_constraint of the original, EasyEdit's clamp; ``l2``: the change's Frobenius norm within
norm_constraint times the weight's). The change is a full matrix: it is stored as a truncated
SVD, at ``rank`` or the smallest rank keeping ``rank_energy`` of its squared norm, and the model
is left holding exactly what is stored.
"""

from __future__ import annotations

import torch

from knowlm_ray.edit.metrics import answer_ids


def _batch(tok, requests, device):
    rows, spans, targets = [], [], []
    for r in requests:
        p, a = answer_ids(tok, r.prompt, r.target_new)
        rows.append(p + a)
        spans.append((len(p) - 1, len(a)))
        targets.append(a)
    width = max(map(len, rows))
    x = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(x)
    labels = torch.full_like(x, -100)
    for i, (row, (s, n), a) in enumerate(zip(rows, spans, targets, strict=True)):
        x[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, s + 1 : s + 1 + n] = torch.tensor(a)
    return x.to(device), mask.to(device), labels.to(device)


def low_rank(delta: torch.Tensor, rank: int, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [out, r], V [in, r]) with U V^T the best rank-r approximation of ``delta``."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    if rank <= 0:
        share = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-30)
        rank = int((share < energy).sum().item()) + 1
    rank = max(1, min(rank, s.numel()))
    return (u[:, :rank] * s[:rank]).float(), vh[:rank].T.float()


def ft(model, tok, requests, preset, layers: list[int], settings, log=print):
    """Fine-tune the layers' projections (in place); returns {weight name: (U, V)} and leaves the
    model holding base + U V^T (in the model's dtype; the bound and the SVD are float32)."""
    names = [preset.weight(x) for x in layers]
    params = [model.get_parameter(n) for n in names]
    base = [p.detach().float().clone() for p in params]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    x, mask, labels = _batch(tok, requests, params[0].device)
    opt = torch.optim.Adam(params, lr=settings.lr)
    eps = settings.norm_constraint
    try:
        for step in range(settings.num_steps):
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            if loss.item() < 1e-2:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, b in zip(params, base, strict=True):
                    d = p.float() - b
                    if eps > 0 and settings.constraint == "linf":
                        d = d.clamp(-eps, eps)
                    elif eps > 0 and d.norm() > eps * b.norm():
                        d = d * (eps * b.norm() / d.norm())
                    p.copy_((b + d).to(p.dtype))
            if (step + 1) % 10 == 0:
                log(f"[edit] ft step {step + 1}/{settings.num_steps} loss {loss.item():.4f}")
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    deltas = {}
    with torch.no_grad():
        for name, p, b in zip(names, params, base, strict=True):
            full = p.float() - b
            u, v = low_rank(full, settings.rank, settings.rank_energy)
            p.copy_((b + u @ v.T).to(p.dtype))
            deltas[name] = (u, v)
            kept = 1 - ((full - u @ v.T).norm() / full.norm().clamp_min(1e-30)).item() ** 2
            log(f"[edit] ft {name}: change stored at rank {u.shape[1]} of {min(b.shape)} ({kept:.3f} of its energy)")
    return deltas
