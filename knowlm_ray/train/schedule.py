"""Learning-rate schedule: linear warmup, then cosine decay (HF ``get_cosine_schedule_with_warmup``).

A pure function of the step, so a resumed run needs no scheduler state in its checkpoint.
"""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
    """LR for optimizer step ``step`` (1-based). Warmup ends at ``base_lr`` on step ``warmup_steps``;
    the cosine then runs so that the last step still learns (its progress is just below 1)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - 1 - warmup_steps) / span))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1.0 - min_ratio) * cosine)
