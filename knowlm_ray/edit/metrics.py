"""EasyEdit's editing metrics, computed the way ``evaluate_utils.test_prediction_acc`` does.

Every metric is teacher-forced: the prompt and its answer go in as one sequence, and at each
answer position the model's argmax is compared with the next answer token.

- reliability: token accuracy of ``target_new`` after the edit prompt;
- generalization: the same after each rephrased prompt;
- locality: on unrelated prompts, the share of answer positions whose argmax token after the
  edit equals the one before it (what the model said, not the gold answer, is kept);
- portability: token accuracy of the portability answers after their prompts.

A prompt and its answer are tokenised together (``prompt + " " + answer``) and the answer's
tokens are those after the prompt's, as EasyEdit does; ``answer_ids`` is that split.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

METRICS = ("reliability", "generalization", "locality", "portability")


def answer_ids(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt tokens with BOS, answer tokens) for ``prompt + " " + answer``."""
    p = tok(prompt).input_ids
    full = tok(f"{prompt} {answer}").input_ids
    if full[: len(p)] != p:  # a merge across the boundary: tokenise the answer on its own
        return p, tok(f" {answer}", add_special_tokens=False).input_ids
    return p, full[len(p) :]


def teacher_forced(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[tuple[list, list]]:
    """Per (prompt, answer): (argmax token at each answer position, the answer's tokens)."""
    import torch

    device = next(model.parameters()).device
    out: list[tuple[list, list]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [answer_ids(tok, p, a) for p, a in pairs[start : start + batch_size]]
        rows = [p + a for p, a in chunk]
        width = max(map(len, rows))
        x = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.no_grad():
            pred = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for i, (p, a) in enumerate(chunk):
            out.append((pred[i, len(p) - 1 : len(p) - 1 + len(a)].tolist(), a))
    return out


def token_accuracy(model, tok, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Teacher-forced token accuracy of each answer after its prompt."""
    return [
        fmean(int(x == y) for x, y in zip(pred, gold, strict=True)) for pred, gold in teacher_forced(model, tok, pairs)
    ]


def same_tokens(before: list[list[int]], after: list[list[int]]) -> list[float]:
    """Locality per prompt: the share of positions whose argmax did not change."""
    return [fmean(int(x == y) for x, y in zip(b, a, strict=True)) for b, a in zip(before, after, strict=True)]


def predictions(model, tok, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    return [pred for pred, _ in teacher_forced(model, tok, pairs)]


def _mean(xs: list[float]) -> float | None:
    return fmean(xs) if xs else None


def request_pairs(requests) -> dict[str, list[tuple[int, str, str]]]:
    """Per metric, (request index, prompt, answer) for every prompt the requests carry."""
    pairs: dict[str, list[tuple[int, str, str]]] = {m: [] for m in METRICS}
    for i, r in enumerate(requests):
        pairs["reliability"].append((i, r.prompt, r.target_new))
        pairs["generalization"] += [(i, p, r.target_new) for p in r.rephrase]
        pairs["locality"] += [(i, p, a) for p, a in r.locality]
        pairs["portability"] += [(i, p, a) for p, a in r.portability]
    return pairs


def score(model, tok, requests, *, locality_before: list[list[int]] | None = None, prefix=None) -> dict[str, Any]:
    """EasyEdit's four metrics over ``requests``: their means and per-request values.

    ``locality_before``: the unedited model's argmax tokens on the locality prompts (from
    ``locality_tokens``); without it locality is not scored. ``prefix(request, prompt)``: a
    prompt rewriter (IKE's demonstrations); the locality prompts are rewritten too.
    """
    pairs = request_pairs(requests)
    per: dict[str, list[list[float]]] = {m: [[] for _ in requests] for m in METRICS}

    def ask(metric):
        rows = pairs[metric]
        return [(prefix(requests[i], p) if prefix else p, a) for i, p, a in rows]

    for metric in ("reliability", "generalization", "portability"):
        for (i, _, _), acc in zip(pairs[metric], token_accuracy(model, tok, ask(metric)), strict=True):
            per[metric][i].append(acc)
    if locality_before is not None:
        after = predictions(model, tok, ask("locality"))
        for (i, _, _), same in zip(pairs["locality"], same_tokens(locality_before, after), strict=True):
            per["locality"][i].append(same)
    means = {m: _mean([x for row in per[m] for x in row]) for m in METRICS}
    return {"means": means, "per_request": [{m: _mean(per[m][i]) for m in METRICS} for i in range(len(requests))]}


def locality_tokens(model, tok, requests) -> list[list[int]]:
    """The argmax tokens on every locality prompt's answer positions (taken before an edit)."""
    return predictions(model, tok, [(p, a) for _, p, a in request_pairs(requests)["locality"]])


def target_logprobs(model, tok, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Mean log-probability of each answer's tokens after its prompt (teacher-forced)."""
    import torch

    device = next(model.parameters()).device
    out = []
    for prompt, answer in pairs:
        p, a = answer_ids(tok, prompt, answer)
        x = torch.tensor([p + a], device=device)
        with torch.no_grad():
            logp = model(input_ids=x).logits[0, len(p) - 1 : len(p) - 1 + len(a)].float().log_softmax(-1)
        out.append(logp.gather(-1, torch.tensor(a, device=device)[:, None]).mean().item())
    return out
