"""The fact-trained fixture, built once per session (a small LLaMA that recalls synthetic facts)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fact_model(tmp_path_factory):
    from knowlm_ray.edit.facts import FactSpec, build_fact_model

    out = tmp_path_factory.mktemp("facts") / "model"
    summary = build_fact_model(out, FactSpec(people=10), log=lambda s: None)
    assert summary["recall"] == 1.0, summary  # a model that learned nothing gives an edit nothing to move
    return out
