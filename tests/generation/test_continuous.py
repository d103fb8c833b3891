"""The continuous batcher without Ray: rows join and leave the running batch step by step, each
with its own parameters, and every greedy row equals what it gives alone."""

from __future__ import annotations

import time

import pytest
import torch

from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams as P

PROMPTS = [
    "浙江大学位于",
    "Name the capital of France.",
    "写一首关于知识图谱的短诗，" * 6,
    "Marie Curie was born in Warsaw and worked in Paris. " * 4,
    "信息抽取",
]


@pytest.fixture(scope="module")
def engine(tiny_model, lora_dirs) -> GenerationEngine:
    return GenerationEngine(tiny_model, loras=lora_dirs, max_loras=2)


@pytest.fixture()
def batcher(engine):
    b = ContinuousBatcher(engine, max_batch_size=8)
    yield b
    b.close()


class Hooks:
    def __init__(self, stream=False, cancel_after=None):
        self.stream, self.cancel_after, self.calls, self.deltas = stream, cancel_after, 0, []

    def wants_text(self, i):
        return self.stream

    def on_text(self, i, delta):
        self.deltas.append(delta)

    def cancelled(self, i):
        self.calls += 1
        return self.cancel_after is not None and self.calls > self.cancel_after


def test_staggered_greedy_rows_with_different_params_each_equal_their_sequential_result(engine, batcher):
    params = [
        P(max_tokens=6),
        P(max_tokens=11, repetition_penalty=1.3),
        P(max_tokens=16),
        P(max_tokens=21, repetition_penalty=1.1),
        P(max_tokens=9),
    ]
    rows = [engine.prepare_prompt(p, q) for p, q in zip(PROMPTS, params)]
    sequential = [engine.generate_prepared([r])[0] for r in rows]
    # Each row arrives once the batcher has stepped since the previous one, the longest first, so
    # every later row joins while earlier ones decode (counted in steps, not in sleeps: on a quiet
    # box a 6-token row finishes within a 20 ms sleep)
    futures = {}
    for i in (3, 2, 1, 4, 0):
        start = batcher.steps
        futures[i] = batcher.submit([rows[i]])
        while batcher.steps <= start and not futures[i].done():
            time.sleep(0.0005)
    assert [futures[i].result(timeout=60)[0] for i in range(len(rows))] == sequential
    assert [r.num_output_tokens for r in sequential] == [6, 11, 16, 21, 9]
    assert batcher.max_active > 1  # rows really shared forward passes
    assert batcher.steps < sum(r.num_output_tokens for r in sequential)
    stats = batcher.stats()
    assert stats["prefill_tokens"] >= sum(len(r.input_ids) for r in rows) and max(stats["decode_step_ms_by_rows"]) > 1


def test_a_late_short_request_joins_and_leaves_before_a_long_one_ends(engine, batcher):
    long = batcher.submit([engine.prepare_prompt(PROMPTS[0], P(max_tokens=400))])
    while batcher.steps < 3:  # the long row is decoding
        time.sleep(0.005)
    short_row = engine.prepare_prompt(PROMPTS[1], P(max_tokens=5))
    short = batcher.submit([short_row]).result(timeout=60)
    assert not long.done()  # it did not wait for the batch to finish, and left it at once
    assert short == engine.generate_prepared([short_row])
    assert long.result(timeout=120)[0].num_output_tokens == 400


def test_a_long_row_outgrowing_its_cache_room_equals_its_sequential_result(engine, batcher):
    # The batch's cache keeps 64 free columns per rebuild: 200 tokens outgrow them, between and
    # across the rebuilds of short rows joining and leaving
    long_row = engine.prepare_prompt(PROMPTS[3], P(max_tokens=200))
    short_rows = [engine.prepare_prompt(p, P(max_tokens=5 + 7 * k)) for k, p in enumerate(PROMPTS)]
    long = batcher.submit([long_row])
    shorts = []
    for row in short_rows:
        start = batcher.steps
        shorts.append(batcher.submit([row]))
        while batcher.steps < start + 25:
            time.sleep(0.0005)
    assert long.result(timeout=120) == engine.generate_prepared([long_row])
    assert [f.result(timeout=60)[0] for f in shorts] == [engine.generate_prepared([r])[0] for r in short_rows]
    assert long.result()[0].num_output_tokens == 200  # no early EOS: it really outgrew the room


def test_sampled_and_greedy_rows_share_a_batch(engine, batcher):
    greedy = engine.prepare_prompt(PROMPTS[2], P(max_tokens=12))
    sampled = engine.prepare_prompt(PROMPTS[3], P(max_tokens=7, temperature=0.9, top_p=0.8, top_k=20))
    torch.manual_seed(0)  # the batcher samples from torch's global generator; no early EOS by chance
    f1, f2 = batcher.submit([sampled] * 3), batcher.submit([greedy])
    assert all(r.num_output_tokens == 7 and r.finish_reason == "length" for r in f1.result(timeout=60))
    assert f2.result(timeout=60) == engine.generate_prepared([greedy])


def test_stop_strings_streaming_and_cancellation(engine, batcher):
    full = engine.generate_prepared([engine.prepare_prompt(PROMPTS[0], P(max_tokens=24))])[0]
    stop = full.text[4:6]
    row = engine.prepare_prompt(PROMPTS[0], P(max_tokens=24), stop=[stop])
    hooks = Hooks(stream=True)
    other = engine.prepare_prompt(PROMPTS[1], P(max_tokens=40))
    cancel = Hooks(cancel_after=5)
    f_stop, f_cancel = batcher.submit([row], hooks), batcher.submit([other], cancel)
    (res,) = f_stop.result(timeout=60)
    assert res.text == full.text[: full.text.find(stop)] and res.finish_reason == "stop"
    assert "".join(hooks.deltas) == res.text and len(hooks.deltas) > 1
    (gone,) = f_cancel.result(timeout=60)
    assert gone.finish_reason == "cancelled" and gone.num_output_tokens < 40


def test_a_cancelled_future_leaves_the_batch(engine, batcher):
    fut = batcher.submit([engine.prepare_prompt(PROMPTS[0], P(max_tokens=900))])
    while batcher.steps < 2:
        time.sleep(0.005)
    assert fut.cancel()  # what an abandoned awaiter does
    deadline = time.monotonic() + 10
    while batcher.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.active == 0


def test_beam_search_and_adapters_keep_their_results(engine, batcher):
    beams = engine.prepare_prompt(PROMPTS[0], P(max_tokens=6, num_beams=2, repetition_penalty=1.3))
    base = engine.prepare_prompt(PROMPTS[4], P(max_tokens=10))
    ie = engine.prepare_prompt(PROMPTS[4], P(max_tokens=10), adapter="ie")
    other = engine.prepare_prompt(PROMPTS[1], P(max_tokens=8), adapter="other")
    futures = [batcher.submit([r]) for r in (ie, base, beams, other, ie)]
    out = [f.result(timeout=60)[0] for f in futures]
    expected = [engine.generate_prepared([r])[0] for r in (ie, base, beams, other, ie)]
    assert out == expected
    assert out[0].text != out[1].text  # the adapter really changed the answer


def test_a_request_larger_than_the_batch_still_runs(engine):
    b = ContinuousBatcher(engine, max_batch_size=2)
    try:
        rows = [engine.prepare_prompt(p, P(max_tokens=4)) for p in PROMPTS[:3]]
        assert b.generate(rows) == engine.generate_prepared(rows)
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(rows)


def test_a_failing_on_start_callback_does_not_break_the_batch(engine, batcher):
    def gone():
        raise RuntimeError("Event loop is closed")

    row = engine.prepare_prompt(PROMPTS[1], P(max_tokens=4))
    assert batcher.submit([row], on_start=gone).result(timeout=60) == engine.generate_prepared([row])
