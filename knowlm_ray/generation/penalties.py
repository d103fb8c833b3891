"""OpenAI-style presence and frequency penalties as a logits processor, for both decode paths.

OpenAI's (and vLLM's, so KnowLM's ``/generate``) definition, over the tokens generated so far
(the prompt does not count)::

    logit[t] -= presence_penalty * [count[t] > 0] + frequency_penalty * count[t]

Applied before temperature, top-k and top-p, as vLLM does: transformers' ``generate`` puts a
caller's processors before its warpers, and the continuous batcher's row list puts it right
after the repetition penalty. Positive values push away from tokens already produced, negative
ones pull towards them.
"""

from __future__ import annotations

from typing import Any


class PresenceFrequencyPenalty:
    """A transformers-compatible logits processor: ``(input_ids, scores) -> scores``.

    ``start``: where the generated tokens begin in ``input_ids`` (the prompt's length: the padded
    length in a left-padded ``generate`` batch, the row's own prompt in the continuous batcher).
    """

    def __init__(self, presence: float, frequency: float, start: int):
        self.presence, self.frequency, self.start = float(presence), float(frequency), int(start)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        new = input_ids[:, self.start :].to(scores.device)
        if new.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, new, torch.ones_like(new, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


def penalty_processors(params: Any, start: int) -> list[PresenceFrequencyPenalty]:
    """``[PresenceFrequencyPenalty]`` when ``params`` (a GenerationParams) asks for one, else []."""
    if params.presence_penalty or params.frequency_penalty:
        return [PresenceFrequencyPenalty(params.presence_penalty, params.frequency_penalty, start)]
    return []
