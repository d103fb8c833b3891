"""What ROME and MEMIT read from and write into a running model: keys, values, random prefixes.

- ``subject_index``: the position of the subject's last token in a prompt (EasyEdit's
  ``fact_token: subject_last``), where a fact is looked up and where an edit acts;
- ``keys``: the input of a module (the key ``k``) at that position, averaged over the random
  prefixes the model writes itself (``context_templates``);
- ``optimize_value``: the vector v* at a module's output (ROME: the MLP output projection,
  MEMIT: the decoder layer) that makes the model emit the new target, by Adam on a delta added
  at the subject's last token, with EasyEdit's KL term, weight decay and norm clamp.

Everything runs in the model's own dtype; the optimised delta and the returned vectors are float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from knowlm_ray.edit.metrics import answer_ids

START_WORDS = ("The", "Therefore", "Because", "I", "You")  # EasyEdit's prefix starts


def subject_index(tok, text_template: str, subject: str, fact_token: str = "subject_last") -> int:
    """Index (BOS counted) of the subject's last token in ``text_template.format(subject)``, or
    with ``fact_token="last"`` of the prompt's last token (EasyEdit's two strategies)."""
    if fact_token == "last":
        return len(tok(text_template.format(subject)).input_ids) - 1
    prefix = text_template[: text_template.index("{}")]
    return len(tok(prefix + subject).input_ids) - 1


def _pad(tok, rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    x = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):  # right padding: positions of a row do not move
        x[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return x.to(device), mask.to(device)


@contextlib.contextmanager
def hook(model, name: str, fn: Callable) -> Iterator[None]:
    """``fn(module, inputs, output)`` on every forward of module ``name``; a non-None return
    replaces the output (a decoder layer's tuple keeps its other items)."""

    def wrapped(module, inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        new = fn(module, inputs, first)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = model.get_submodule(name).register_forward_hook(wrapped)
    try:
        yield
    finally:
        handle.remove()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def read_at(
    model, tok, name: str, prompts: list[tuple[str, str]], *, side: str = "in", fact_token: str = "subject_last"
) -> torch.Tensor:
    """[n, dim] float32: module ``name``'s input (``side="in"``) or output at the subject's last
    token of each (text_template, subject)."""
    rows = [tok(t.format(s)).input_ids for t, s in prompts]
    idx = [subject_index(tok, t, s, fact_token) for t, s in prompts]
    seen: list[torch.Tensor] = []

    def grab(module, inputs, output):
        seen.append(inputs[0] if side == "in" else output)

    x, mask = _pad(tok, rows, _device(model))
    with torch.no_grad(), hook(model, name, grab):
        model(input_ids=x, attention_mask=mask)
    return torch.stack([seen[0][i, j] for i, j in enumerate(idx)]).float().cpu()  # the algebra runs on CPU


def keys(model, tok, name: str, requests, templates: list[str], fact_token: str = "subject_last") -> torch.Tensor:
    """[n, in] float32: per request, module ``name``'s input at the subject's last token averaged
    over the context templates."""
    out = []
    for r in requests:
        prompts = [(c.format(r.template), r.subject) for c in templates]
        out.append(read_at(model, tok, name, prompts, side="in", fact_token=fact_token).mean(0))
    return torch.stack(out)


def context_templates(model, tok, length_params, seed: int = 0) -> list[str]:
    """``"{}"`` plus ``"<prefix>. {}"`` for prefixes the model samples from EasyEdit's start words
    (top-k 5), ``count`` of ``length`` tokens per ``[length, count]``."""
    templates = ["{}"]
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    for length, count in length_params:
        per = max(1, count // len(START_WORDS))
        for word in START_WORDS:
            ids = tok(word).input_ids
            for _ in range(per):
                seq = list(ids)
                with torch.no_grad():
                    for _ in range(length):
                        logits = model(input_ids=torch.tensor([seq], device=device)).logits[0, -1].float().cpu()
                        top = logits.topk(5)
                        pick = torch.multinomial(top.values.softmax(-1), 1, generator=gen).item()
                        seq.append(int(top.indices[pick]))
                text = tok.decode(seq, skip_special_tokens=True)
                templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates


def optimize_value(model, tok, request, name: str, templates: list[str], s) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(v*, v, nll): module ``name``'s output at the subject's last token in the edit prompt after
    and before the optimisation (float32), and the target's mean NLL at the last step."""
    device = _device(model)
    rows, idx, spans = [], [], []
    target: list[int] = []
    for c in templates:
        text_template = c.format(request.template)
        p, target = answer_ids(tok, text_template.format(request.subject), request.target_new)
        rows.append(p + target[:-1])
        idx.append(len(p) - 1 if s.fact_token == "last" else subject_index(tok, text_template, request.subject))
        spans.append(len(p) - 1)
    kl_template = "{} is a"
    rows.append(tok(kl_template.format(request.subject)).input_ids)
    idx.append(subject_index(tok, kl_template, request.subject, s.fact_token))
    x, mask = _pad(tok, rows, device)
    n_rw = len(templates)
    tgt = torch.tensor(target, device=device)
    positions = torch.stack([torch.arange(s0, s0 + len(target), device=device) for s0 in spans])
    sel = torch.zeros(x.shape[0], x.shape[1], 1, device=device)
    for i, j in enumerate(idx):
        sel[i, j] = 1.0

    hidden = model.get_submodule(name)
    dim = getattr(hidden, "out_features", None) or model.config.hidden_size
    delta = torch.zeros(dim, device=device, requires_grad=True)
    state: dict[str, torch.Tensor] = {}

    def add_delta(module, inputs, output):
        if "init" not in state:
            state["init"] = output[0, idx[0]].detach().float().clone()
        return output + (sel * delta).to(output.dtype)

    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    opt = torch.optim.Adam([delta], lr=s.v_lr)
    kl_init = None
    try:
        with hook(model, name, add_delta):
            for step in range(s.v_num_grad_steps):
                logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
                kl_logp = logp[n_rw, idx[n_rw]].unsqueeze(0)
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                rw = logp[torch.arange(n_rw, device=device)[:, None], positions]  # [n_rw, T, vocab]
                nll = -rw.gather(-1, tgt.expand(n_rw, -1).unsqueeze(-1)).squeeze(-1).mean(1).mean()
                kl = s.kl_factor * torch.nn.functional.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
                decay = s.v_weight_decay * (delta.norm() / state["init"].norm() ** 2)
                loss = nll + kl + decay
                state["nll"] = torch.tensor(nll.item())
                if loss.item() < 5e-2 or step == s.v_num_grad_steps - 1:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                limit = s.clamp_norm_factor * state["init"].norm()
                with torch.no_grad():
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    init = state["init"]
    return (init + delta.detach()).float().cpu(), init.cpu(), float(state["nll"])
