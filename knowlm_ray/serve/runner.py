"""The life of a request inside a replica, in plain asyncio (no Ray): admission, deadline,
cancellation and streaming around a batcher.

A request becomes a ``Job`` (one or more rows: prompts × ``n``). ``Runner.admit`` refuses it with
``Overloaded`` when ``max_waiting`` jobs already wait for a batch — the bounded queue that turns
overload into a quick 503 instead of a hang. A job waits until all its rows have joined the
batch (a 750-row job joins row by row, so it waits long), and a streaming job takes its place at
``admit`` like any other, so simultaneous streams cannot pass the bound. ``Runner.run`` awaits
its results; ``Runner.stream`` yields ``(row, text)`` deltas as tokens are made, then the
results. Both stop the job's rows when the deadline passes (``RequestTimeout``) or the caller
goes away (task cancelled: a client disconnect in Serve, behind its proxy or HAProxy), so an
abandoned generation stops at its next token. ``JobStreamingResponse`` is the HTTP body of a
streaming job: however the response ends (the client gone before the first byte included), a
job it did not finish is cancelled and its place in line given back.

``submit`` is the batcher: an async callable taking one job and returning its results. The Serve
deployment passes either ``continuous_submit(batcher)`` (continuous batching: a job's rows join
the running batch at the next decode step) or a ``@serve.batch`` method that calls
``Runner.execute`` for a list of jobs in a worker thread; tests pass anything with the same shape.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.responses import StreamingResponse

from knowlm_ray.generation.engine import GenerationEngine, GenerationResult, Prepared

if TYPE_CHECKING:
    from knowlm_ray.generation.continuous import ContinuousBatcher


class Overloaded(Exception):
    """Too many requests wait already (503 with Retry-After)."""

    def __init__(self, waiting: int, retry_after_s: float):
        super().__init__(f"server overloaded: {waiting} requests are already waiting; retry in {retry_after_s:g}s")
        self.retry_after_s = retry_after_s


class RequestTimeout(Exception):
    """The request ran past its deadline (504); its generation was stopped."""


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    rows: Sequence[Prepared]
    stream: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    _cancel: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _queue: asyncio.Queue | None = None
    _waiting: bool = False
    _entered: bool = False  # has taken its place in line once (a job never re-enters it)
    _on_dequeue: Callable[[Job], None] | None = None
    done: bool = False  # its answer (or its error) is out: nothing left to cancel
    generated_tokens: int = 0
    created: float = field(default_factory=time.monotonic)

    def timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            f"request timed out after {time.monotonic() - self.created:.1f}s; its generation was stopped"
        )

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        self.dequeued()

    def dequeued(self) -> None:
        """Left the waiting line (picked up by a batch, or abandoned); idempotent."""
        if self._waiting:
            self._waiting = False
            if self._on_dequeue is not None:
                self._on_dequeue(self)

    def emit(self, row: int, delta: str) -> None:
        """From the generating thread: hand a text delta to the streaming coroutine."""
        if self._queue is not None and self._loop is not None and not self.cancelled:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (row, delta))


class _BatchHooks:
    """Maps the flat row list of a batch back to (job, row) for the engine's per-row hooks."""

    def __init__(self, jobs: Sequence[Job]):
        self.where = [(job, r) for job in jobs for r in range(len(job.rows))]

    def wants_text(self, i: int) -> bool:
        return self.where[i][0].stream

    def on_text(self, i: int, delta: str) -> None:
        job, row = self.where[i]
        job.emit(row, delta)

    def cancelled(self, i: int) -> bool:
        return self.where[i][0].cancelled


def continuous_submit(batcher: ContinuousBatcher) -> Callable[[Job], Awaitable[list[GenerationResult]]]:
    """A ``submit`` for ``Runner`` that hands each job to a continuous batcher.

    The job leaves the waiting line when its rows join the batch; cancelling the awaiting task
    (deadline, disconnect) cancels the future, which stops its rows at their next token.
    """

    async def submit(job: Job) -> list[GenerationResult]:
        loop = asyncio.get_running_loop()
        future = batcher.submit(job.rows, _BatchHooks([job]), on_start=lambda: loop.call_soon_threadsafe(job.dequeued))
        results = await asyncio.wrap_future(future)
        job.generated_tokens = sum(r.num_output_tokens for r in results)
        return results

    return submit


class Runner:
    def __init__(
        self,
        engine: GenerationEngine | None,
        submit: Callable[[Job], Awaitable[list]],
        *,
        max_waiting: int = 16,
        timeout_s: float = 300.0,
        retry_after_s: float = 1.0,
        on_queue_change: Callable[[int], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ):
        self.engine = engine
        self.submit = submit
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self.on_queue_change = on_queue_change
        self.on_event = on_event
        self.counts = {"admitted": 0, "rejected": 0, "timed_out": 0, "cancelled": 0, "completed": 0}

    def _count(self, event: str) -> None:
        self.counts[event] += 1
        if self.on_event is not None:
            self.on_event(event)

    # -- admission -------------------------------------------------------------------------
    def admit(self, rows: Sequence[Prepared], stream: bool = False) -> Job:
        """A job, or Overloaded when ``max_waiting`` jobs already wait for a batch.

        The job takes its place in the line now, streaming or not (``run`` follows without an
        await in between; a streaming job's ``JobStreamingResponse`` gives the place back if its
        body is never iterated).
        """
        if self.waiting >= self.max_waiting:
            self._count("rejected")
            raise Overloaded(self.waiting, self.retry_after_s)
        job = Job(rows=list(rows), stream=stream, _on_dequeue=self._left_line)
        self._count("admitted")
        self._enqueue(job)
        return job

    def abandon(self, job: Job) -> None:
        """The caller went away before the job was done: stop it, count it, free its place."""
        if not job.done and not job.cancelled:
            self._count("cancelled")
        job.cancel()

    def _enqueue(self, job: Job) -> None:
        if not job._entered and not job.cancelled:
            job._waiting = job._entered = True
            self.waiting += 1
            self._changed()

    def _left_line(self, job: Job) -> None:
        self.waiting -= 1
        self._changed()

    def _changed(self) -> None:
        if self.on_queue_change is not None:
            self.on_queue_change(self.waiting)

    def deadline(self, timeout_s: float | None = None) -> float:
        t = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        return time.monotonic() + t

    # -- batch side (worker thread) ----------------------------------------------------------
    def execute(self, jobs: Sequence[Job]) -> list[list[GenerationResult]]:
        """Run a batch of jobs through the engine; results per job, rows in order."""
        assert self.engine is not None
        rows = [r for job in jobs for r in job.rows]
        flat = self.engine.generate_prepared(rows, hooks=_BatchHooks(jobs))
        out, k = [], 0
        for job in jobs:
            res = flat[k : k + len(job.rows)]
            job.generated_tokens = sum(r.num_output_tokens for r in res)
            out.append(res)
            k += len(job.rows)
        return out

    def picked_up(self, jobs: Sequence[Job]) -> None:
        """Called by the batcher when a batch starts (on the event loop)."""
        for job in jobs:
            job.dequeued()

    # -- request side (event loop) ---------------------------------------------------------
    async def run(self, job: Job, deadline: float) -> list[GenerationResult]:
        self._enqueue(job)
        try:
            remaining = deadline - time.monotonic()
            results = await asyncio.wait_for(self.submit(job), timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            job.cancel()
            job.done = True
            self._count("timed_out")
            raise job.timed_out() from None
        except asyncio.CancelledError:  # the client went away
            self.abandon(job)
            raise
        except BaseException:  # the batch failed: nothing left to stop
            job.done = True
            job.cancel()
            raise
        job.done = True
        job.dequeued()
        self._count("completed")
        return results

    async def stream(self, job: Job, deadline: float) -> AsyncIterator[tuple[int, str] | list[GenerationResult]]:
        """Yields ``(row, delta)`` as text is made, then the list of results (last item).

        Closing the iterator early (client disconnect) cancels the job's generation.
        """
        job._loop = asyncio.get_running_loop()
        job._queue = asyncio.Queue()
        self._enqueue(job)
        task = asyncio.ensure_future(self.submit(job))
        finished = False
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(job._queue.get())
                remaining = deadline - time.monotonic()
                done, _ = await asyncio.wait(
                    {getter, task}, timeout=max(remaining, 0.001), return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                if task in done:
                    break
                job.cancel()  # deadline passed
                self._count("timed_out")
                finished = job.done = True
                raise job.timed_out()
            finished = job.done = True  # from here on, an error is the batch's, not a disconnect
            results = task.result()
            while not job._queue.empty():  # deltas posted before the batch returned
                yield job._queue.get_nowait()
            job.dequeued()
            self._count("completed")
            yield results
        finally:
            if not finished:  # closed early or cancelled: the client is gone
                self.abandon(job)
            for fut in (getter, task):
                if fut is not None and not fut.done():
                    fut.cancel()
            job.dequeued()


class JobStreamingResponse(StreamingResponse):
    """A streaming job's HTTP body. Starlette stops iterating a body whose client went away
    (and a handler cancelled before its body starts never iterates it at all), which leaves the
    generator, and the runner's ``finally`` in it, suspended until garbage collection; here the
    job is abandoned as the response ends, so its rows stop at the next decode step and its
    place in line is free at once."""

    def __init__(self, runner: Runner, job: Job, content, **kwargs):
        super().__init__(content, **kwargs)
        self.runner, self.job = runner, job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.runner.abandon(self.job)
