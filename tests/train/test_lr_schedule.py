"""Linear warmup then cosine decay, a pure function of the step (nothing to checkpoint)."""

from __future__ import annotations

import pytest

from knowlm_ray.train.schedule import lr_at


def test_warmup_is_linear_to_the_peak():
    assert lr_at(1, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(5, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(11, 1.0, 10, 100) == pytest.approx(1.0)  # the cosine starts at the peak


def test_cosine_decays_monotonically_and_the_last_step_still_learns():
    lrs = [lr_at(s, 2e-3, 0, 50) for s in range(1, 51)]
    assert lrs[0] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert 0 < lrs[-1] < 1e-5
    assert lr_at(26, 1.0, 0, 50) == pytest.approx(0.5)  # half-way through the cosine


def test_min_lr_ratio_is_the_floor():
    assert lr_at(1000, 1.0, 0, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert min(lr_at(s, 1.0, 5, 100, 0.1) for s in range(6, 101)) >= 0.1
