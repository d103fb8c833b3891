"""Continuous batching over a ``GenerationEngine``: requests join the running batch at the next
decode step and leave it the step they finish; every row keeps its own sampling parameters.

One thread owns the model. Each turn it (1) stops the rows of callers that went away, (2) admits
waiting rows while the batch has room, prefilling their prompts in one left-padded forward pass,
and (3) runs one decode step over all active rows: one new token per row from one forward pass
with the KV cache (transformers' ``DynamicCache``, its layers kept in preallocated buffers that
a step writes its column into: ``_SlotLayer``), an attention mask over the left padding and
explicit position ids, so a row's positions are what they would be alone. Greedy rows take the argmax; other rows go
through transformers' own logits processors (repetition penalty, presence / frequency penalties,
temperature, top-k, top-p) row by row. Stops, streaming and cancellation are ``RowState``'s, as
on the grouped path.

Fair admission: a request's rows join one at a time, not as a block, and each free slot goes to
the waiting request with the fewest rows in the batch (ties: round-robin). When the batch is
full and a newcomer has fewer rows in it than another request has minus one, that request's
youngest row (one still being prefilled, if it has one) is preempted: it leaves the batch with
its tokens and state, goes back to the front of its request's line and, readmitted, prefills its
prompt plus the tokens it had made (vLLM's preemption by recomputation). So a one-row request
next to a 750-row job joins at the next decode step, and the big job keeps a fair share (never
less than one row) instead of starving. Slots
that free up for requests already decoding are refilled once a quarter of the batch is free,
so a prefill pass does not interrupt every decode step; a newcomer never waits for that. A
request's rows still come back complete and in order.

Prefill budget: a one-row request beside a 750-row job decodes in steps that also prefill the
big job's refills (~400-token prompts); prefilled whole, a wave of them stalled its steps for
many decode steps' time (BENCHMARKS.md, "Fair admission"). So while a request whose rows are all decoding (nothing of it left to
prefill) shares the batch, the other requests' rows are prefilled at most ``max_prefill_tokens``
prompt tokens per decode step, saved up and spent ``CHUNK_STEPS`` steps' worth at a time (a
forward pass has a fixed cost): rows that fit go in one padded pass as before, a longer one in
chunks over several steps (its own cache until its prompt is in, then it joins). A newcomer's
first row is prefilled whole at once (it joins at the next step, and the budget never delays
it); with no such request in the batch (a job alone, or every request still filling) rows go in
passes of up to ``PASS_TOKENS`` whole rows, so a lone job's throughput is what it was and a
newcomer waits for one such pass at most. The budget trades the big job's speed for
the small one's: at 16 tokens a 400-token prompt takes 25 steps to join, so beside a steady
stream of small requests a big job runs on few rows (tune ``max_prefill_tokens`` per device).

Cancellation: a request whose caller went away (its future cancelled, or its hooks say so) has
its rows stopped before the next forward pass and their slots given to others in the same turn;
its rows that had not joined yet are dropped without a forward pass.

Why not transformers' ``ContinuousBatchingManager`` (``generate_batch``)? It runs on CPU and its
greedy tokens match, but it has no per-request repetition penalty (KnowLM's 1.3), and on this
box its paged cache set-up took ~20 s for 4 requests of 16 tokens.

Beam search (``num_beams > 1``) ranks whole hypotheses and stays on the engine's grouped
``generate`` path, run from the same thread between steps. Rows with different LoRA adapters
cannot share a forward pass: the batch serves one adapter at a time, first come first served
(a request for another adapter stops admission until the batch drains, so none starves).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from knowlm_ray.generation.engine import GenerationEngine, GenerationResult, Prepared, RowHooks, RowState
from knowlm_ray.generation.penalties import penalty_processors

log = logging.getLogger("knowlm_ray.generation")

DEFAULT_MAX_PREFILL_TOKENS = 16  # per decode step beside a request mid-flight; see BENCHMARKS.md
# The budget is saved up and spent in chunks of up to this many steps' worth: a forward pass has a
# fixed cost, so a few small chunks cost more than one of their size (BENCHMARKS.md, "Fair admission")
CHUNK_STEPS = 4
# Unlimited prefill (a job alone) still goes in passes of whole rows up to this many tokens: a
# newcomer waits for one pass, not for a batch's worth of ~400-token prompts
PASS_TOKENS = 1024


@dataclass(eq=False)
class _Request:
    rows: list[Prepared]
    hooks: RowHooks | None
    future: Future
    on_start: Callable[[], None] | None
    results: list[GenerationResult | None] = field(default_factory=list)
    unfinished: int = 0
    # rows not in the batch, in order: an index (never run) or a preempted ``_Row`` (resumes)
    line: deque = field(default_factory=deque)

    @property
    def adapter(self) -> str | None:
        return self.rows[0].adapter if self.rows else None

    @property
    def beams(self) -> bool:
        return any(r.params.num_beams > 1 for r in self.rows)

    def started(self) -> None:
        """Tell the caller all its rows joined; a caller that is gone must not break the batch."""
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:  # e.g. its event loop closed meanwhile
                log.debug("on_start callback failed", exc_info=True)
            self.on_start = None

    def set(self, i: int, result: GenerationResult) -> None:
        self.results[i] = result
        self.unfinished -= 1
        if self.unfinished == 0 and not self.future.done():
            self.future.set_result(list(self.results))

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _CancelOnFuture:
    """The request's hooks, plus: a future cancelled by its awaiter cancels every row."""

    def __init__(self, req: _Request):
        self.req = req

    def wants_text(self, i: int) -> bool:
        return self.req.hooks is not None and self.req.hooks.wants_text(i)

    def on_text(self, i: int, delta: str) -> None:
        self.req.hooks.on_text(i, delta)  # type: ignore[union-attr]

    def cancelled(self, i: int) -> bool:
        return self.req.future.cancelled() or (self.req.hooks is not None and self.req.hooks.cancelled(i))


class _Row:
    """An active row: its tokens, its place in the request, its processors and its state."""

    def __init__(self, engine: GenerationEngine, req: _Request, i: int):
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        item = req.rows[i]
        self.req, self.i = req, i
        self.prompt = list(item.input_ids)
        self.new: list[int] = []
        self.state = RowState(engine.tokenizer, item, i, _CancelOnFuture(req))
        q = item.params
        self.sampling = q.sampling
        # The order transformers' generate applies them in (penalty, temperature, top-k, top-p).
        procs = LogitsProcessorList()
        if q.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(q.repetition_penalty))
        procs.extend(penalty_processors(q, len(self.prompt)))  # presence / frequency, before temperature
        if self.sampling:
            procs.append(TemperatureLogitsWarper(q.temperature))
            if q.top_k:
                procs.append(TopKLogitsWarper(q.top_k))
            if q.top_p < 1.0:
                procs.append(TopPLogitsWarper(q.top_p))
        self.procs = procs

    @property
    def position(self) -> int:  # of the last token, the one fed to the next step
        return len(self.prompt) + len(self.new) - 1

    def pick(self, scores):
        """The next token from this row's float32 logits (1, vocab)."""
        import torch

        constraint = self.state.constraint  # constrained decoding: the mask first, then the rest
        if constraint is not None:
            forced = constraint.forced()
            if forced is not None:
                return forced
            scores = scores.clone()
            constraint.mask_(scores)
        if self.procs:
            ids = torch.tensor([self.prompt + self.new], device=scores.device)
            scores = self.procs(ids, scores)
        if self.sampling:
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1)[0, 0])
        else:
            token = int(scores[0].argmax())
        return token if constraint is None else constraint.settle(token)

    def push(self, token: int) -> bool:
        """Record a new token; True when the row is finished."""
        self.new.append(token)
        return self.state.step(len(self.new), token, lambda: self.new)


class _Fill:
    """A row whose prompt (and, resumed after preemption, its new tokens) is being prefilled a
    chunk per step, in a batch-of-one cache of its own until the whole of it is in."""

    __slots__ = ("row", "ids", "done", "cache")

    def __init__(self, row: _Row):
        self.row = row
        self.ids = row.prompt + row.new
        self.done = 0  # tokens already in ``cache``
        self.cache = None

    @property
    def left(self) -> int:
        return len(self.ids) - self.done


class ContinuousBatcher:
    """``submit(rows, hooks)`` → a Future of the rows' results; a background thread decodes.

    ``max_batch_size``: rows decoded together at most; a request with more rows joins as slots
    free, sharing them fairly with the other requests (see the module's docstring).
    ``max_prefill_tokens``: prompt tokens prefilled per decode step for rows joining beside a
    request that is only decoding (None: no limit).
    """

    def __init__(
        self,
        engine: GenerationEngine,
        max_batch_size: int = 16,
        max_prefill_tokens: int | None = DEFAULT_MAX_PREFILL_TOKENS,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1 (or None: no limit), got {max_prefill_tokens}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._refill_at = max(1, max_batch_size // 4)  # free slots before a running request gets more
        self._incoming: deque[_Request] = deque()  # submitted, not yet seen by the thread
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # decoding state, touched only by the thread
        self._line: list[_Request] = []  # requests with rows outside the batch, round-robin order
        self._rows: list[_Row] = []
        self._filling: deque[_Fill] = deque()  # rows with a slot whose prefill is not done, in order
        self._cache = None
        self._mask = None  # (rows, cache length) long: 1 = a real token, 0 = left padding
        self._adapter: str | None = None
        self.steps = 0  # decode steps run (for tests and stats)
        self.max_active = 0  # most rows decoded in one step so far
        self.waiting_rows = 0  # rows submitted that have not joined the batch (preempted ones included)
        # rows stopped because their caller went away: in the batch / before they ever ran
        self.cancelled_rows = 0
        self.dropped_rows = 0
        self.preempted_rows = 0  # rows taken out of a full batch to give a newcomer its share
        self.prefill_chunks = 0  # prefill passes over part of a row's prompt (the budget split it)
        self._credit = 0  # prompt tokens the budget has saved up (see _prefill)
        self._step_time: dict[int, list[float]] = {}  # rows in a decode step -> [steps, seconds]
        self._prefill_time = [0, 0.0]  # prompt tokens prefilled (padding excluded), seconds
        # A decode step's query is each row's last token, so its mask is just "not padding": handed
        # to SDPA as a ready 4-D bool mask, transformers skips rebuilding one every step (~10% of a
        # small model's step). Eager attention adds masks (floats), flash attention wants 2-D.
        self._mask_4d = getattr(engine.model.config, "_attn_implementation", None) == "sdpa"

    # -- the caller's side ------------------------------------------------------------------
    def submit(
        self, rows: Sequence[Prepared], hooks: RowHooks | None = None, on_start: Callable[[], None] | None = None
    ) -> Future:
        """Queue ``rows``; ``on_start`` is called (from the decoding thread) when the last of
        them has joined the batch: the request no longer waits."""
        req = _Request(list(rows), hooks, Future(), on_start, [None] * len(rows), len(rows), deque(range(len(rows))))
        if not rows:
            req.future.set_result([])
            return req.future
        with self._wake:
            if self._closed:
                raise RuntimeError("the continuous batcher is closed")
            self._incoming.append(req)
            self.waiting_rows += len(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="knowlm-continuous", daemon=True)
                self._thread.start()
            self._wake.notify()
        return req.future

    @property
    def active(self) -> int:
        """Rows holding a slot: decoding, or being prefilled to join."""
        return len(self._rows) + len(self._filling)

    def stats(self) -> dict:
        """Decode steps and their mean time by batch size (what batching costs on this device),
        prefill time per prompt token, and rows waiting, preempted, stopped and dropped."""
        tokens, seconds = self._prefill_time
        steps = sorted(dict(self._step_time).items())  # dict(): an atomic copy (GIL)
        return {
            "decode_steps": self.steps,
            "max_active_rows": self.max_active,
            "active_rows": self.active,
            "waiting_rows": self.waiting_rows,
            "preempted_rows": self.preempted_rows,
            "prefill_chunks": self.prefill_chunks,
            "cancelled_rows": self.cancelled_rows,
            "dropped_rows": self.dropped_rows,
            "decode_step_ms_by_rows": {n: round(1000 * t / c, 2) for n, (c, t) in steps},
            "prefill_tokens": tokens,
            "prefill_ms_per_token": round(1000 * seconds / tokens, 3) if tokens else None,
            "thread_cpu_s": self.thread_cpu_s(),
        }

    def thread_cpu_s(self) -> float:
        """CPU seconds the decoding thread has used (forward passes, token picking, cache
        surgery): the engine's share of its process, apart from the request handling around it."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return 0.0
        try:
            return round(time.clock_gettime(time.pthread_getcpuclockid(thread.ident)), 4)
        except (AttributeError, OSError):  # no per-thread CPU clocks on this platform
            return 0.0

    def generate(self, rows: Sequence[Prepared], hooks: RowHooks | None = None) -> list[GenerationResult]:
        return self.submit(rows, hooks).result()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the decoding thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._incoming or self._line or self._rows or self._filling):
                    self._wake.wait()
                if self._closed:
                    break
                incoming, self._incoming = list(self._incoming), deque()
            beams = [req for req in incoming if req.beams]
            self._line.extend(req for req in incoming if not req.beams)
            for req in beams:  # whole-hypothesis search: the grouped generate path
                self._left(len(req.rows))
                self._run_beams(req)
            urgent: list[_Row] = []
            try:
                self._sweep()
                urgent, preempt = self._take()
                if preempt:
                    self._preempt(preempt)
                if urgent or self._filling:
                    self._prefill(urgent)
                if self._rows:
                    self._decode()
            except BaseException as exc:  # a failed forward pass fails the requests in it
                log.error("continuous batch step failed", exc_info=exc)
                rows = self._rows + urgent + [f.row for f in self._filling]
                for req in {id(r.req): r.req for r in rows}.values():
                    req.fail(exc)
                self._reset()
        with self._wake:
            waiting = (
                list(self._incoming) + self._line + [r.req for r in self._rows] + [f.row.req for f in self._filling]
            )
        for req in waiting:
            req.fail(RuntimeError("the continuous batcher was closed"))

    def _left(self, n: int) -> None:
        """``n`` rows left the waiting line (joined the batch, or were dropped)."""
        with self._wake:
            self.waiting_rows -= n

    def _sweep(self) -> None:
        """Stop the rows of callers that went away: those in the batch before the next forward
        pass (their slots go to others this turn), those waiting before they ever run."""
        keep: list[int] = []
        for k, row in enumerate(self._rows):
            if row.req.future.done() or row.state.cancelled():
                row.state.end(len(row.new), "cancelled", "", None)
                row.req.set(row.i, row.state.result())
                self.cancelled_rows += 1
            else:
                keep.append(k)
        if len(keep) < len(self._rows):
            self._select(keep)
        filling = deque()
        for f in self._filling:
            if f.row.req.future.done() or f.row.state.cancelled():
                f.row.state.end(len(f.row.new), "cancelled", "", None)
                f.row.req.set(f.row.i, f.row.state.result())
                self.cancelled_rows += 1
            else:
                filling.append(f)
        self._filling = filling
        line: list[_Request] = []
        for req in self._line:
            first = req.line[0]
            index = first if isinstance(first, int) else first.i
            if req.future.done() or _CancelOnFuture(req).cancelled(index):  # one look a turn, then every row
                kept = deque(item for item in req.line if not (req.future.done() or self._drop_if_gone(req, item)))
                self.dropped_rows += len(req.line) - len(kept)
                self._left(len(req.line) - len(kept))
                req.line = kept
            if req.line:
                line.append(req)
        self._line = line

    def _drop_if_gone(self, req: _Request, item: int | _Row) -> bool:
        """End a waiting row whose caller went away; True if it was."""
        if isinstance(item, _Row):
            if not item.state.cancelled():
                return False
            item.state.end(len(item.new), "cancelled", "", None)
            req.set(item.i, item.state.result())
            return True
        if not _CancelOnFuture(req).cancelled(item):
            return False
        req.set(item, GenerationResult("", 0, len(req.rows[item].input_ids), "cancelled"))
        return True

    def _take(self) -> tuple[list[_Row], list[int]]:
        """Rows that join now and are prefilled whole at once, and batch rows to preempt for them
        (indices into ``_rows``); the other rows that join go to ``_filling``, prefilled within
        the budget. Prefilled at once: the first row of each request with none in the batch.

        One adapter at a time: while a request for another adapter waits, nothing joins and the
        batch drains; a drained batch turns to another adapter when one waits. Each slot
        goes to the request with the fewest rows in the batch, ties to the one first in line, and
        a request that got a row moves to the back of the line (round-robin)."""
        if not self._line:
            return [], []
        if self._rows or self._filling:
            adapter = self._adapter
            if any(req.adapter != adapter for req in self._line):
                return [], []  # another adapter waits: drain first
        else:  # drained: another adapter's turn if one waits, else the first in line's
            adapter = next((r.adapter for r in self._line if r.adapter != self._adapter), self._line[0].adapter)
        candidates = [req for req in self._line if req.adapter == adapter]
        held: dict[int, int] = {}  # id(request) -> its rows in the batch (after this turn)
        for row in self._rows + [f.row for f in self._filling]:
            held[id(row.req)] = held.get(id(row.req), 0) + 1
        room = self.max_batch_size - self.active
        if self.active and room < self._refill_at and all(held.get(id(r), 0) for r in candidates):
            # Only requests already decoding wait for more rows: refill their slots a few at a
            # time, not one prefill pass (as dear as a decode step here) per finished row
            return [], []
        admitted: list[_Row] = []
        urgent: list[_Row] = []
        preempt: list[_Row] = []
        served: list[_Request] = []
        filling = list(self._filling)  # before this turn's rows join it: never preempted this turn
        while candidates:
            req = min(candidates, key=lambda r: held.get(id(r), 0))  # min() keeps the first of ties
            if room <= 0:
                victim = self._victim(held, filling, {id(v) for v in preempt})
                if victim is None or held[id(victim.req)] <= held.get(id(req), 0) + 1:
                    break  # every request has its share
                preempt.append(victim)
                held[id(victim.req)] -= 1
                room += 1
            item = req.line.popleft()
            row = item if isinstance(item, _Row) else _Row(self.engine, req, item)
            admitted.append(row)
            if not held.get(id(req), 0):  # a newcomer: its first row joins at the next step
                urgent.append(row)
            else:
                self._filling.append(_Fill(row))
            held[id(req)] = held.get(id(req), 0) + 1
            room -= 1
            if req not in served:
                served.append(req)
            if not req.line:
                candidates.remove(req)
        if admitted:
            self._left(len(admitted))
            self._adapter = adapter
        done = [req for req in served if not req.line]
        for req in done:
            req.started()
        # served requests go to the back, in the order they were served; preempted ones rejoin
        self._line = [req for req in self._line if req not in served] + [req for req in served if req.line]
        for row in preempt:
            if row.req not in self._line:
                self._line.append(row.req)
        return urgent, preempt

    def _victim(self, held: dict[int, int], filling: list[_Fill], taken: set[int]) -> _Row | None:
        """The row to preempt: of the request holding the most rows (the latest of equals), a row
        still filling (the least prefilled: nothing decoded yet), else its decoding row with the
        fewest new tokens (the least to recompute)."""
        best: tuple | None = None
        keys = [(held.get(id(f.row.req), 0), 1, -f.done, k, f.row) for k, f in enumerate(filling)]
        keys += [(held.get(id(r.req), 0), 0, -len(r.new), k, r) for k, r in enumerate(self._rows)]
        for key in keys:
            if id(key[-1]) not in taken and (best is None or key[:-1] > best[:-1]):
                best = key
        return None if best is None else best[-1]

    def _preempt(self, rows: list[_Row]) -> None:
        """Take these rows out of the batch (or out of filling), each back to the front of its
        request's line."""
        for row in sorted(rows, key=lambda r: -r.i):  # a request's earlier rows end up first
            row.req.line.appendleft(row)
        self.preempted_rows += len(rows)
        with self._wake:
            self.waiting_rows += len(rows)
        gone = {id(r) for r in rows}
        self._filling = deque(f for f in self._filling if id(f.row) not in gone)
        if any(id(r) in gone for r in self._rows):
            self._select([k for k, r in enumerate(self._rows) if id(r) not in gone])

    def _run_beams(self, req: _Request) -> None:
        req.started()
        try:
            results = self.engine.generate_prepared(req.rows, _CancelOnFuture(req))
        except BaseException as exc:
            req.fail(exc)
            return
        for i, res in enumerate(results):
            req.set(i, res)

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._filling = [], None, None, deque()

    def _forward(self, **kwargs):
        import torch

        engine = self.engine
        with engine._lock, engine._use(self._adapter), torch.inference_mode():
            out = engine.model(use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float()

    def _budget(self, urgent: list[_Row]) -> float:
        """Prompt tokens to prefill this step: ``max_prefill_tokens`` while the batch (or a
        newcomer joining now) holds a row of a request with nothing else left to prefill (each
        step delays it), else no limit."""
        if self.max_prefill_tokens is None:
            return float("inf")
        filling = {id(f.row.req) for f in self._filling}
        if any(not r.req.line and id(r.req) not in filling for r in self._rows + urgent):
            return self.max_prefill_tokens
        return float("inf")

    def _prefill(self, urgent: list[_Row]) -> None:
        """Prefill newcomers' first rows whole, then rows in ``_filling`` within the budget:
        those whose prompt fits go in one padded pass with the newcomers, the first that does not
        fit is prefilled a chunk (continued next step). Rows whose prompt is in join the batch."""
        import torch

        limit = self._budget(urgent)
        unlimited = limit == float("inf")
        budget = PASS_TOKENS
        if not unlimited:  # saved up a step at a time, spent a whole chunk (or row) at once
            self._credit = int(min(self._credit + limit, CHUNK_STEPS * limit))
            head = self._filling[0].left if self._filling else 0
            budget = self._credit if self._credit >= min(head, CHUNK_STEPS * limit) else 0
        whole = list(urgent)
        spent = sum(len(r.prompt) + len(r.new) for r in whole)
        joined: list[tuple] = []  # (cache, mask, logits, rows) of rows whose prefill is complete
        while self._filling and spent < budget:
            f = self._filling[0]
            if not f.done and (spent + f.left <= budget or (unlimited and not whole)):
                whole.append(self._filling.popleft().row)  # fits whole (or goes alone): the padded pass
                spent += f.left
                continue
            if unlimited and not f.done:
                break  # the pass is full: next step
            take = int(min(f.left, budget - spent))
            logits = self._chunk(f, take)
            spent += take
            if f.left:
                break  # the budget is spent; the rest of this prompt next step
            self._filling.popleft()
            mask = torch.ones((1, len(f.ids)), dtype=torch.long, device=self.engine.device)
            joined.append((f.cache, mask, logits, [f.row]))
        if whole:
            joined.append(self._prefill_whole(whole))
        self._credit = 0 if unlimited else max(0, self._credit - spent)
        if not joined:
            return
        first = len(self._rows)
        for cache, mask, _, rows in joined:
            self._merge(cache, mask)
            self._rows.extend(rows)
        self._advance(torch.cat([j[2] for j in joined]), first=first)

    def _prefill_whole(self, rows: list[_Row]) -> tuple:
        """One left-padded pass over new rows (their prompt) and preempted ones (their prompt and
        new tokens)."""
        from transformers import DynamicCache

        engine = self.engine
        batch = engine.tokenizer.pad({"input_ids": [r.prompt + r.new for r in rows]}, padding=True, return_tensors="pt")
        mask = batch["attention_mask"].to(engine.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=engine.model.config)
        t0 = time.perf_counter()
        logits = self._forward(
            input_ids=batch["input_ids"].to(engine.device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
        )
        self._prefill_time[0] += int(mask.sum())
        self._prefill_time[1] += time.perf_counter() - t0
        return cache, mask, logits, rows

    def _chunk(self, f: _Fill, n: int):
        """Prefill the next ``n`` tokens of ``f`` into its own cache; the last position's logits."""
        import torch
        from transformers import DynamicCache

        device = self.engine.device
        if f.cache is None:
            f.cache = DynamicCache(config=self.engine.model.config)
        end = f.done + n
        t0 = time.perf_counter()
        logits = self._forward(
            input_ids=torch.tensor([f.ids[f.done : end]], device=device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
            position_ids=torch.arange(f.done, end, device=device)[None],
            past_key_values=f.cache,
        )
        self._prefill_time[0] += n
        self._prefill_time[1] += time.perf_counter() - t0
        self.prefill_chunks += 1
        f.done = end
        return logits

    def _decode(self) -> None:
        import torch

        device = self.engine.device
        ids = torch.tensor([[r.new[-1]] for r in self._rows], device=device)
        positions = torch.tensor([[r.position] for r in self._rows], device=device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        t0 = time.perf_counter()
        logits = self._forward(
            input_ids=ids,
            attention_mask=mask.bool()[:, None, None, :] if self._mask_4d else mask,
            position_ids=positions,
            past_key_values=self._cache,
        )
        n = len(self._rows)
        timing = self._step_time.setdefault(n, [0, 0.0])
        timing[0] += 1
        timing[1] += time.perf_counter() - t0
        self._mask = mask
        self.steps += 1
        self.max_active = max(self.max_active, n)
        self._advance(logits)

    def _advance(self, logits, first: int = 0) -> None:
        """Pick and record a token for rows ``first:`` (logits rows align with them); drop the
        rows that finished."""
        rows = self._rows[first:]
        plain = [b for b, r in enumerate(rows) if not r.procs and not r.sampling and r.state.constraint is None]
        tokens: dict[int, int] = {}
        if plain:  # greedy, no penalty: one argmax for all of them
            for b, t in zip(plain, logits[plain].argmax(dim=-1).tolist()):
                tokens[b] = t
        for b, r in enumerate(rows):
            if b not in tokens:
                tokens[b] = r.pick(logits[b : b + 1])
        keep: list[int] = list(range(first))
        for b, r in enumerate(rows):
            if r.push(tokens[b]):
                r.req.set(r.i, r.state.result(r.new))
                self.cancelled_rows += r.state.finish == "cancelled"  # seen after its token, not before
            else:
                keep.append(first + b)
        if len(keep) < len(self._rows):
            self._select(keep)

    # -- KV cache surgery -----------------------------------------------------------------------
    def _layers(self, cache) -> list:
        from transformers.cache_utils import DynamicLayer

        for layer in cache.layers:
            if type(layer) is not DynamicLayer:  # sliding-window etc. keep their own bookkeeping
                raise NotImplementedError(
                    f"continuous batching needs plain DynamicLayer KV caches, the model "
                    f"uses {type(layer).__name__}: set batching: dynamic"
                )
        return cache.layers

    def _merge(self, cache, mask) -> None:
        """Append newly prefilled rows (``cache``, ``mask``) to the running batch, left-padding
        whichever is shorter so every row's tokens end in the last column. The batch's layers
        are ``_SlotLayer``s: one copy here, none per decode step."""
        import torch
        import torch.nn.functional as F

        fresh = self._layers(cache)
        if self._cache is None:
            width = mask.shape[1]
            cache.layers = [_slot_layer().stack([(b.keys, b.values)], width) for b in fresh]
            self._cache, self._mask = cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        self._cache.layers = [
            _slot_layer().stack([(a.keys, a.values), (b.keys, b.values)], width)
            for a, b in zip(self._cache.layers, fresh)
        ]
        self._mask = torch.cat([F.pad(self._mask, (width - old_len, 0)), F.pad(mask, (width - new_len, 0))])

    def _select(self, keep: list[int]) -> None:
        """Keep these rows; drop cache columns that are padding for every remaining row."""
        import torch

        if not keep:  # rows still filling keep their own caches
            self._rows, self._cache, self._mask = [], None, None
            return
        mask = self._mask[keep]
        start = int(mask.any(dim=0).long().argmax())  # first column any row still uses
        index = torch.tensor(keep, device=mask.device)
        width = mask.shape[1] - start
        for a in self._cache.layers:  # one copy of the kept rows, room to grow included
            a.keep(index.to(a.keys.device), start, width)
        self._mask = mask[:, start:]
        self._rows = [self._rows[k] for k in keep]


@functools.cache
def _slot_layer():
    """``_SlotLayer``, built on first use (transformers is imported lazily here)."""
    from transformers.cache_utils import DynamicLayer

    class _SlotLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are the first ``length`` columns of buffers
        with room to grow: a decode step writes its column in place. DynamicLayer concatenates,
        a copy of the whole cache (and a fresh allocation) every step: more than half of a small
        model's decode step on a CPU (BENCHMARKS.md, "Fair admission")."""

        room = 64  # free columns after a rebuild; growing copies once per ``room`` or more steps

        @classmethod
        def stack(cls, parts, width: int):
            """Rows of ``parts`` ((keys, values) each), right-aligned in ``width`` columns (zeros
            to their left: padding the mask hides, kept finite)."""
            first = parts[0][0]
            rows = sum(k.shape[0] for k, _ in parts)
            layer = cls()
            layer.dtype, layer.device, layer.is_initialized = first.dtype, first.device, True
            shape = (rows, first.shape[1], width + cls.room, first.shape[3])
            layer._k, layer._v = first.new_empty(shape), first.new_empty(shape)
            at = 0
            for k, v in parts:
                n, pad = k.shape[0], width - k.shape[2]
                for buf, part in ((layer._k, k), (layer._v, v)):
                    buf[at : at + n, :, :pad] = 0
                    buf[at : at + n, :, pad:width] = part
                at += n
            layer._view(width)
            return layer

        def keep(self, index, start: int, width: int) -> None:
            """Keep the rows at ``index``, from column ``start`` on (``width`` columns in use)."""
            self._k = self._k.index_select(0, index)[:, :, start:]
            self._v = self._v.index_select(0, index)[:, :, start:]
            self._view(width)

        def _view(self, length: int) -> None:
            self.length = length
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[2]
            if end > self._k.shape[2]:  # out of room: a bigger buffer, one copy
                grown = (self._k.shape[0], self._k.shape[1], end + max(self.room, end // 4), self._k.shape[3])
                k, v = self._k.new_empty(grown), self._v.new_empty(grown)
                k[:, :, : self.length], v[:, :, : self.length] = self.keys, self.values
                self._k, self._v = k, v
            self._k[:, :, self.length : end] = key_states
            self._v[:, :, self.length : end] = value_states
            self._view(end)
            return self.keys, self.values

    return _SlotLayer
