from __future__ import annotations

import pytest
import torch

from knowlm_ray.edit import metrics
from knowlm_ray.edit.requests import EditRequest


def test_same_tokens_by_hand():
    assert metrics.same_tokens([[1, 2, 3], [4]], [[1, 9, 3], [5]]) == [2 / 3, 0.0]


@pytest.mark.slow
def test_metrics_equal_hand_computed(fact_model):
    from knowlm_ray.edit.apply import load_model
    from knowlm_ray.edit.facts import load_facts

    model, tok = load_model(fact_model)
    fact = load_facts(fact_model)[0]
    other = load_facts(fact_model)[3]

    def by_hand(prompt, answer):  # one forward pass of prompt + " " + answer, argmax per answer position
        full = tok(f"{prompt} {answer}").input_ids
        n = len(tok(prompt).input_ids)
        with torch.no_grad():
            pred = model(input_ids=torch.tensor([full])).logits[0].argmax(-1).tolist()
        return [pred[i - 1] == full[i] for i in range(n, len(full))], pred[n - 1 : len(full) - 1]

    r = EditRequest(
        prompt=fact.prompts[0],
        subject=fact.subject,
        target_new="Zzyzx Qwerty",
        rephrase=[fact.prompts[1]],
        locality=[(other.prompts[0], other.target)],
        portability=[(fact.prompts[2], fact.target)],
    )
    hits, _ = by_hand(r.prompt, r.target_new)
    rephrase_hits, _ = by_hand(fact.prompts[1], r.target_new)
    _, loc_pred = by_hand(other.prompts[0], other.target)
    before = metrics.locality_tokens(model, tok, [r])
    assert before == [loc_pred]
    s = metrics.score(model, tok, [r], locality_before=before)["means"]
    assert s["reliability"] == pytest.approx(sum(hits) / len(hits))
    assert s["generalization"] == pytest.approx(sum(rephrase_hits) / len(rephrase_hits))
    assert s["portability"] == 1.0 and s["locality"] == 1.0  # the model knows the fact; nothing changed
    assert s["reliability"] < 1.0  # the made-up target is not what the model says
    # a different "before" changes locality to the share of equal positions
    shifted = [[t + 1 for t in loc_pred]]
    assert metrics.score(model, tok, [r], locality_before=shifted)["means"]["locality"] == 0.0
