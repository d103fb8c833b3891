"""Shared fixtures: quiet, offline environment; one tiny model and one local Ray per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from knowlm_ray.runtime import set_default_env

set_default_env()
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny LLaMA + tokenizer trained on data/sample (built once per test session)."""
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    out = tmp_path_factory.mktemp("tiny") / "model"
    corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
    if not corpus:  # only while data/sample is being written: a small stand-in corpus
        stand_in = out.parent / "corpus.txt"
        stand_in.write_text("\n".join(
            f"浙江大学位于杭州市，第{i}届学生在西湖边读书。The river Thames flows through London, "
            f"and report {i} was published in 2023 by Dr. Smith." for i in range(300)), encoding="utf-8")
        corpus = [stand_in]
    return build_tiny(out, corpus, TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (start 2.5 s, shutdown 1.8 s: never per test)."""
    import ray

    from knowlm_ray.runtime import init_ray

    init_ray(num_cpus=2, object_store_mb=512)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
