"""OpenAI-style presence / frequency penalties: the formula on hand-made logits, and on the tiny
model in both decode paths (the grouped ``generate`` path and the continuous batcher)."""

from __future__ import annotations

import pytest
import torch

from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams
from knowlm_ray.generation.penalties import PresenceFrequencyPenalty, penalty_processors


def test_formula_on_hand_made_logits():
    # prompt [9, 1] (not counted), then generated 2, 2, 3: counts 2 -> 2, 3 -> 1, the rest 0
    ids = torch.tensor([[9, 1, 2, 2, 3]])
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    out = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, start=2)(ids, scores.clone())
    # logit -= presence * [count > 0] + frequency * count
    expected = [1.0, 2.0, 3.0 - 0.5 - 0.25 * 2, 4.0 - 0.5 - 0.25 * 1, 5.0]
    assert out.tolist() == [pytest.approx(expected)]
    # negative values pull towards what was said; the prompt never counts
    out = PresenceFrequencyPenalty(presence=-1.0, frequency=0.0, start=2)(ids, scores.clone())
    assert out.tolist() == [pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])]
    assert torch.equal(PresenceFrequencyPenalty(1.0, 1.0, start=5)(ids, scores.clone()), scores)


def test_rows_are_counted_separately_and_probabilities_shift_as_the_formula_says():
    ids = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 3]])  # start 1: row 0 said 1 x3; row 1 said 2, 0, 3
    scores = torch.zeros(2, 4)
    out = PresenceFrequencyPenalty(presence=0.0, frequency=1.0, start=1)(ids, scores)
    assert out.tolist() == [[0.0, -3.0, 0.0, 0.0], [-1.0, 0.0, -1.0, -1.0]]
    p = torch.softmax(out[0], -1)
    assert p[1] / p[0] == pytest.approx(torch.exp(torch.tensor(-3.0)).item())


def test_only_asked_for_penalties_make_a_processor():
    assert penalty_processors(GenerationParams(), 3) == []
    (proc,) = penalty_processors(GenerationParams(frequency_penalty=0.5), 3)
    assert (proc.presence, proc.frequency, proc.start) == (0.0, 0.5, 3)


def test_ranges_follow_openai():
    for bad in (-2.5, 2.5):
        with pytest.raises(ValueError):
            GenerationParams(presence_penalty=bad)
        with pytest.raises(ValueError):
            GenerationParams(frequency_penalty=bad)
    assert GenerationParams(top_k=-1).top_k == 0  # -1 is "off", as 0
    with pytest.raises(ValueError):
        GenerationParams(top_k=-2)


@pytest.fixture(scope="module")
def engine(tiny_model) -> GenerationEngine:
    return GenerationEngine(tiny_model)


def _max_repeat(engine, text: str) -> int:
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    return max((ids.count(t) for t in set(ids)), default=0)


PROMPT = "浙江大学位于"


def test_large_frequency_penalty_stops_greedy_repeats_in_both_paths(engine):
    plain = engine.prepare_prompt(PROMPT, GenerationParams(max_tokens=40))
    penalised = engine.prepare_prompt(PROMPT, GenerationParams(max_tokens=40, frequency_penalty=2.0))
    # greedy on a tiny model loops: some token comes back many times
    free = engine.generate_prepared([plain])[0]
    free_ids = engine.tokenizer(free.text, add_special_tokens=False)["input_ids"]
    assert max(free_ids.count(t) for t in set(free_ids)) >= 3, free.text
    grouped = engine.generate_prepared([penalised, plain])  # different penalties: separate calls
    assert grouped[1] == free
    batcher = ContinuousBatcher(engine, max_batch_size=4)
    try:
        continuous = batcher.generate([penalised, plain])
    finally:
        batcher.close()
    assert continuous[1].text == free.text
    assert grouped[0].text == continuous[0].text  # the two paths agree token for token
    assert grouped[0].text != free.text
    # with frequency 2.0 each repeat costs 2 logits: the tiny model no longer loops on one token
    assert _max_repeat(engine, grouped[0].text) < max(free_ids.count(t) for t in set(free_ids))
