"""Decode steps hand SDPA a ready 4-D padding mask (transformers skips rebuilding one each step);
other attention implementations keep the 2-D mask. Either way greedy rows equal their results
alone, with rows of different prompt lengths (left padding) joining a running batch."""

from __future__ import annotations

import time

import pytest

from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams as P

PROMPTS = [
    "浙江大学位于",
    "Marie Curie was born in Warsaw and worked in Paris. " * 3,
    "信息抽取",
    "写一首关于知识图谱的短诗，" * 4,
]


def _staggered(batcher: ContinuousBatcher, rows) -> list:
    futures = []
    for r in rows:  # each joins the running batch: the cache is left-padded to the longest row
        futures.append(batcher.submit([r]))
        time.sleep(0.01)
    return [f.result(timeout=60)[0] for f in futures]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_rows_equal_their_sequential_results_with_either_mask(tiny_model, attn):
    engine = GenerationEngine(tiny_model)
    engine.model.set_attn_implementation(attn)
    rows = [engine.prepare_prompt(p, P(max_tokens=n)) for p, n in zip(PROMPTS, (12, 20, 7, 16))]
    sequential = [engine.generate_prepared([r])[0] for r in rows]
    batcher = ContinuousBatcher(engine, max_batch_size=4)
    try:
        assert batcher._mask_4d is (attn == "sdpa")
        assert _staggered(batcher, rows) == sequential
        assert batcher.max_active > 1
        assert batcher.stats()["thread_cpu_s"] > 0  # the decoding thread is alive and timed
        if attn == "sdpa":  # and the 2-D path gives the very same tokens
            batcher._mask_4d = False
            assert _staggered(batcher, rows) == sequential
    finally:
        batcher.close()
