"""The request runner without Ray: bounded waiting line, deadlines, cancellation, streaming —
over both batchers (one job at a time through the grouped path, and the continuous batcher)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams
from knowlm_ray.serve.runner import JobStreamingResponse, Overloaded, RequestTimeout, Runner, continuous_submit


@pytest.fixture(scope="module")
def engine(tiny_model) -> GenerationEngine:
    return GenerationEngine(tiny_model)


@pytest.fixture(scope="module", params=["grouped", "continuous"])
def batching(request, engine):
    if request.param == "grouped":
        yield None
        return
    batcher = ContinuousBatcher(engine, max_batch_size=8)
    yield batcher
    batcher.close()


def _runner(engine, batcher=None, **kw) -> Runner:
    """A runner over the continuous batcher, or (None) one whose batcher runs each job alone in a
    thread through the grouped path (the Serve app's @serve.batch batches them)."""
    if batcher is not None:
        return Runner(engine, continuous_submit(batcher), **kw)
    holder = {}

    async def submit(job):
        holder["r"].picked_up([job])
        (res,) = await asyncio.to_thread(holder["r"].execute, [job])
        return res

    holder["r"] = Runner(engine, submit, **kw)
    return holder["r"]


def _rows(engine, n=1, max_tokens=8, prompt="浙江大学位于"):
    return [engine.prepare_prompt(prompt, GenerationParams(max_tokens=max_tokens))] * n


def test_run_returns_the_engines_results(engine, batching):
    runner = _runner(engine, batching)
    rows = _rows(engine, n=2)
    out = asyncio.run(runner.run(runner.admit(rows), runner.deadline()))
    assert out == engine.generate_prepared(rows)
    assert runner.waiting == 0 and runner.counts["completed"] == 1


def test_a_full_waiting_line_is_refused_at_once_and_frees_up():
    queue_sizes = []
    runner = Runner(None, None, max_waiting=2, retry_after_s=3, on_queue_change=queue_sizes.append)
    a, b = runner.admit([]), runner.admit([])
    with pytest.raises(Overloaded, match="2 requests are already waiting") as err:
        runner.admit([])
    assert err.value.retry_after_s == 3 and runner.counts["rejected"] == 1
    a.dequeued()
    a.dequeued()  # idempotent
    runner.admit([])
    b.cancel()
    assert runner.waiting == 1 and queue_sizes == [1, 2, 1, 2, 1]


def test_deadline_stops_the_generation_and_raises(engine, batching):
    runner = _runner(engine, batching, timeout_s=0.3)
    job = runner.admit(_rows(engine, max_tokens=900))

    async def go():
        with pytest.raises(RequestTimeout, match="timed out"):
            await runner.run(job, runner.deadline())
        await asyncio.sleep(0.3)  # the worker thread sees the flag at its next token

    asyncio.run(go())
    assert job.cancelled and runner.counts["timed_out"] == 1 and runner.waiting == 0
    assert batching is None or batching.active == 0  # its row left the batch


def test_stream_yields_deltas_then_results(engine, batching):
    runner = _runner(engine, batching)
    rows = _rows(engine, n=2, max_tokens=12)

    async def go():
        events = [ev async for ev in runner.stream(runner.admit(rows, stream=True), runner.deadline())]
        return events

    events = asyncio.run(go())
    results = events[-1]
    for row in (0, 1):
        assert "".join(d for r, d in events[:-1] if r == row) == results[row].text
    assert results == engine.generate_prepared(rows)


def test_closing_a_stream_cancels_its_generation(engine, batching):
    runner = _runner(engine, batching)
    job = runner.admit(_rows(engine, max_tokens=900), stream=True)

    async def go():
        stream = runner.stream(job, runner.deadline())
        first = await stream.__anext__()
        await stream.aclose()  # what a client disconnect does to the response body
        await asyncio.sleep(0.3)
        return first

    first = asyncio.run(go())
    assert first[0] == 0 and job.cancelled and runner.counts["cancelled"] == 1
    assert job.generated_tokens < 900  # the generation itself stopped
    assert batching is None or batching.active == 0


def test_stream_deadline_raises_inside_the_stream(engine, batching):
    runner = _runner(engine, batching, timeout_s=0.3)
    job = runner.admit(_rows(engine, max_tokens=900), stream=True)

    async def go():
        with pytest.raises(RequestTimeout):
            async for _ in runner.stream(job, runner.deadline()):
                pass

    asyncio.run(go())
    assert job.cancelled and runner.counts["timed_out"] == 1 and runner.counts["cancelled"] == 0


def test_streams_take_their_place_in_line_at_admission(engine, batching):
    runner = _runner(engine, batching, max_waiting=2)
    runner.admit(_rows(engine), stream=True)
    runner.admit(_rows(engine), stream=True)  # neither body has started: both wait all the same
    with pytest.raises(Overloaded):
        runner.admit(_rows(engine), stream=True)
    assert runner.waiting == 2


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_stream_body_cut_off_before_its_first_byte_gives_its_place_back(engine, spec):
    """Starlette's two ways of noticing a gone client: a disconnect message (ASGI < 2.4) or a
    failing send (2.4); either way the body is never iterated, and the job is abandoned."""
    runner = _runner(engine, None, max_waiting=1)
    job = runner.admit(_rows(engine), stream=True)
    started = []

    async def body():
        started.append(True)
        yield "data: never\n\n"

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        if spec == "2.4":
            raise OSError("connection reset by peer")
        await asyncio.sleep(1)  # 2.3: the disconnect message wins

    async def go():
        response = JobStreamingResponse(runner, job, body(), media_type="text/event-stream")
        with contextlib.suppress(Exception):
            await response({"type": "http", "asgi": {"spec_version": spec}}, receive, send)

    asyncio.run(go())
    assert not started and job.cancelled and runner.waiting == 0 and runner.counts["cancelled"] == 1
    runner.admit(_rows(engine), stream=True)  # the place is free again


def test_a_job_waits_until_all_its_rows_have_joined(engine):
    """A job bigger than the batch joins row by row: it holds its place in line meanwhile."""
    batcher = ContinuousBatcher(engine, max_batch_size=2)
    try:
        runner = _runner(engine, batcher, max_waiting=1)

        async def go():
            job = runner.admit(_rows(engine, n=6, max_tokens=6))
            task = asyncio.ensure_future(runner.run(job, runner.deadline()))
            seen = set()
            while not task.done():
                seen.add(runner.waiting)
                await asyncio.sleep(0.001)
            return job, task.result(), seen

        job, results, seen = asyncio.run(go())
        assert len(results) == 6 and 1 in seen and runner.waiting == 0 and job.done
    finally:
        batcher.close()


def test_a_failing_batch_is_an_error_not_a_cancellation(engine):
    async def boom(job):
        raise RuntimeError("engine exploded")

    runner = Runner(engine, boom)
    with pytest.raises(RuntimeError, match="exploded"):
        asyncio.run(runner.run(runner.admit(_rows(engine)), runner.deadline()))
    assert runner.waiting == 0 and runner.counts["cancelled"] == 0
