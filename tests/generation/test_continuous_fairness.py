"""Fair admission and cancellation in the continuous batcher, without Ray: a big request joins
row by row and shares the batch, a small one beside it joins within a step or two, a caller
that goes away frees its slots before the next step and its waiting rows never run."""

from __future__ import annotations

import threading
import time

import pytest

from knowlm_ray.generation.continuous import CHUNK_STEPS, PASS_TOKENS, ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams as P

PROMPTS = ["浙江大学位于", "Name the capital of France.", "信息抽取", "Marie Curie was born in Warsaw.", "知识图谱"]


@pytest.fixture(scope="module")
def engine(tiny_model) -> GenerationEngine:
    return GenerationEngine(tiny_model)


def _until(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.0005)


class Gone:
    """Hooks of a caller that can hang up: ``cancelled`` once ``leave()`` was called."""

    def __init__(self):
        self.left = threading.Event()

    def wants_text(self, i):
        return False

    def on_text(self, i, delta):
        pass

    def cancelled(self, i):
        return self.left.is_set()


def test_a_small_request_joins_a_full_batch_within_a_step_and_the_big_one_completes(engine):
    big_rows = [engine.prepare_prompt(f"{PROMPTS[k % 5]} {k}", P(max_tokens=12 + k % 7)) for k in range(24)]
    small_row = engine.prepare_prompt(PROMPTS[1], P(max_tokens=6))
    expected_big = [engine.generate_prepared([r])[0] for r in big_rows]
    b = ContinuousBatcher(engine, max_batch_size=4)
    try:
        big = b.submit(big_rows)
        _until(lambda: b.steps >= 3)  # the big request fills the batch
        assert b.active == 4 and b.stats()["waiting_rows"] > 0
        submitted_at, joined_at = b.steps, []
        small = b.submit([small_row], on_start=lambda: joined_at.append(b.steps))
        assert small.result(timeout=60) == engine.generate_prepared([small_row])
        assert joined_at[0] - submitted_at <= 2  # not behind 20 waiting rows of the big one
        assert not big.done()  # it kept running beside the small one
        assert big.result(timeout=120) == expected_big  # complete, in order, preempted rows resumed exactly
        stats = b.stats()
        assert stats["preempted_rows"] >= 1 and stats["waiting_rows"] == 0 and stats["max_active_rows"] == 4
    finally:
        b.close()


def test_a_stream_of_small_requests_never_starves_a_big_one(engine):
    b = ContinuousBatcher(engine, max_batch_size=2)
    try:
        big = b.submit([engine.prepare_prompt(p, P(max_tokens=10)) for p in PROMPTS])
        smalls = []
        deadline = time.monotonic() + 60
        while not big.done():  # two small requests always wait beside it
            assert time.monotonic() < deadline, "the big request starved"
            if sum(not f.done() for f in smalls) < 2:
                smalls.append(b.submit([engine.prepare_prompt(PROMPTS[len(smalls) % 5], P(max_tokens=10))]))
            time.sleep(0.001)
        assert [r.num_output_tokens for r in big.result()] and len(smalls) > 2
    finally:
        b.close()


def test_a_caller_that_hangs_up_frees_its_slots_within_one_step(engine):
    b = ContinuousBatcher(engine, max_batch_size=4)
    try:
        caller = Gone()
        fut = b.submit([engine.prepare_prompt(p, P(max_tokens=900)) for p in PROMPTS[:4]], caller)
        _until(lambda: b.steps >= 3)
        assert b.active == 4
        hung_up_at = b.steps
        caller.left.set()
        _until(lambda: b.active == 0)
        assert b.steps - hung_up_at <= 1  # at most the step already under way
        results = fut.result(timeout=10)
        assert all(r.finish_reason == "cancelled" and 0 < r.num_output_tokens < 900 for r in results)
        assert b.stats()["cancelled_rows"] == 4
    finally:
        b.close()


def test_waiting_rows_of_a_gone_caller_never_run(engine):
    b = ContinuousBatcher(engine, max_batch_size=1)
    try:
        long = Gone()
        long_row = engine.prepare_prompt(PROMPTS[0], P(max_tokens=900))
        running = b.submit([long_row], long)
        _until(lambda: b.steps >= 2)
        waiter = Gone()
        rows = [engine.prepare_prompt(p * 3, P(max_tokens=8)) for p in PROMPTS[1:4]]
        queued = b.submit(rows, waiter)  # the one slot is taken: its rows wait
        _until(lambda: b.stats()["waiting_rows"] == 3)
        waiter.left.set()
        _until(lambda: queued.done())
        long.left.set()
        running.result(timeout=10)
        assert [r.finish_reason for r in queued.result()] == ["cancelled"] * 3
        assert all(r.num_output_tokens == 0 for r in queued.result())
        stats = b.stats()
        assert stats["dropped_rows"] == 3 and stats["waiting_rows"] == 0
        assert stats["prefill_tokens"] == len(long_row.input_ids)  # only the running row was ever prefilled
    finally:
        b.close()


class StepLog(ContinuousBatcher):
    """Records, at each decode step, the prompt tokens prefilled since the step before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefilled: dict[int, int] = {}  # decode step -> prompt tokens prefilled in its turn
        self._seen = 0

    def _decode(self):
        tokens = self.stats()["prefill_tokens"]
        self.prefilled[self.steps + 1], self._seen = tokens - self._seen, tokens
        super()._decode()


LONG = "Marie Curie was born in Warsaw and worked in Paris with Pierre Curie. "


def test_a_small_requests_steps_carry_at_most_the_prefill_budget_of_a_big_jobs_refills(engine):
    budget = 16
    big_rows = [engine.prepare_prompt(f"{LONG * 3} {k}", P(max_tokens=3 + k % 4)) for k in range(12)]
    small_row = engine.prepare_prompt(PROMPTS[0], P(max_tokens=10))
    assert min(len(r.input_ids) for r in big_rows) > CHUNK_STEPS * budget  # each refill takes several chunks
    expected_big = [engine.generate_prepared([r])[0] for r in big_rows]
    b = StepLog(engine, max_batch_size=4, max_prefill_tokens=budget)
    try:
        big = b.submit(big_rows)
        _until(lambda: b.steps >= 2)
        joined_at: list[int] = []
        small = b.submit([small_row], on_start=lambda: joined_at.append(b.steps))
        got = small.result(timeout=60)
        assert got == engine.generate_prepared([small_row])
        # its first token comes from its prefill, the others from the steps first .. first + 8
        first = joined_at[0] + 1  # the step of the turn it joined in: its own prompt, whole
        mid = [b.prefilled[s] for s in range(first + 1, first + got[0].num_output_tokens - 1)]
        assert b.prefilled[first] <= len(small_row.input_ids) + budget
        # every later step of it: the budget on average (saved up for a chunk of at most 4 steps' worth)
        assert len(mid) == 8 and max(mid) <= CHUNK_STEPS * budget and sum(mid) <= budget * (len(mid) + CHUNK_STEPS)
        assert sum(mid) > 0  # the big job kept being prefilled beside it, not stopped
        assert big.result(timeout=120) == expected_big  # rows prefilled in chunks decode as if whole
        assert b.stats()["prefill_chunks"] > 0
    finally:
        b.close()


def test_a_job_alone_is_prefilled_whole_whatever_the_budget(engine):
    rows = [engine.prepare_prompt(f"{LONG * 3} {k}", P(max_tokens=2 + k % 3)) for k in range(10)]
    b = ContinuousBatcher(engine, max_batch_size=4, max_prefill_tokens=8)
    try:
        assert b.generate(rows) == [engine.generate_prepared([r])[0] for r in rows]
        assert b.stats()["prefill_chunks"] == 0  # nobody else's steps to protect: no chunking
    finally:
        b.close()


def test_a_job_alone_is_prefilled_in_passes_of_whole_rows_up_to_pass_tokens(engine):
    rows = [engine.prepare_prompt(f"{LONG * 12} {k}", P(max_tokens=3)) for k in range(8)]
    sizes = [len(r.input_ids) for r in rows]
    assert sum(sizes) > 2 * PASS_TOKENS and max(sizes) < PASS_TOKENS
    b = StepLog(engine, max_batch_size=8)
    try:
        assert b.generate(rows) == [engine.generate_prepared([r])[0] for r in rows]
        passes = [n for n in b.prefilled.values() if n]
        assert max(passes) <= PASS_TOKENS and len(passes) >= 3  # a newcomer waits for one pass, not all
        assert b.stats()["prefill_chunks"] == 0  # whole rows only: nobody's steps to protect
    finally:
        b.close()


@pytest.mark.parametrize("bad", [0, -5])
def test_a_prefill_budget_below_one_token_is_refused(engine, bad):
    with pytest.raises(ValueError, match="max_prefill_tokens must be >= 1"):
        ContinuousBatcher(engine, max_prefill_tokens=bad)


def test_a_newcomer_takes_the_slot_of_a_row_still_being_prefilled(engine):
    b = ContinuousBatcher(engine, max_batch_size=4, max_prefill_tokens=4)
    try:
        big_rows = [engine.prepare_prompt(f"{LONG * 3} {k}", P(max_tokens=3)) for k in range(12)]
        big = b.submit(big_rows)
        _until(lambda: b.steps >= 1)
        long_row = engine.prepare_prompt(PROMPTS[0], P(max_tokens=200))
        running = b.submit([long_row])  # decoding the whole time: the big job's refills go 4 tokens a step
        _until(lambda: b.stats()["prefill_chunks"] >= 2)  # the big job's slots are rows still filling
        submitted_at, joined_at = b.steps, []
        small_row = engine.prepare_prompt(PROMPTS[1], P(max_tokens=5))
        small = b.submit([small_row], on_start=lambda: joined_at.append(b.steps))
        assert small.result(timeout=60) == engine.generate_prepared([small_row])
        assert joined_at[0] - submitted_at <= 2  # not behind a filling row's 90-token prompt at 4 a step
        assert not running.done()
        assert running.result(timeout=120) == engine.generate_prepared([long_row])
        assert big.result(timeout=120) == [engine.generate_prepared([r])[0] for r in big_rows]
    finally:
        b.close()
