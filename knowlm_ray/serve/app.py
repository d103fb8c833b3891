"""The Ray Serve application: one deployment, FastAPI ingress, batching over the engine —
continuous batching (``continuous.py``, the default) or ``@serve.batch`` dynamic batching.

Routes: ``POST /generate`` (KnowLM), ``POST /v1/completions``, ``POST /v1/chat/completions``
(``stream: true`` → server-sent events), ``GET /v1/models``, ``GET /healthz``, ``GET /is_ready``
(KnowLM's probe). Every error is ``{"error": {"message", "type"}}``: 400/422 bad request, 401
missing/wrong API key, 404 unknown model or route, 413 a body past ``max_body_bytes``, 503 +
``Retry-After`` overload, 504 past ``request_timeout_s``, 500 a bug (naming the request id, never
the exception's text). Request bounds (``bounds.py``) refuse a request before the work it would
cost; tokenising runs in a worker thread, off the event loop.

``serve run serve_configs/tiny.yaml`` imports ``build_app`` (an application builder: it gets the
config's ``args``, validated by ``AppArgs``); ``knowlm serve`` and ``knowlm demo`` reach it
through ``launch.py``. Handle methods for other code in the cluster: ``generate_texts`` (the seam
``/extract`` builds on) and ``get_stats``.
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods.

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from knowlm_ray.alpaca import build_prompt
from knowlm_ray.config import ConfigError, load_config
from knowlm_ray.generation.chat import render_chat
from knowlm_ray.generation.continuous import DEFAULT_MAX_PREFILL_TOKENS, ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine, GenerationResult, Prepared
from knowlm_ray.generation.errors import CONTEXT_LENGTH_EXCEEDED, RequestError, UnknownModelError
from knowlm_ray.generation.params import GenerateRequest, GenerationParams
from knowlm_ray.ie.extract import (
    IERequestError,
    assemble,
    parse_extract_request,
    plan_extraction,
    request_constraints,
)
from knowlm_ray.ie.formats import DEFAULT_FORMAT
from knowlm_ray.serve import bounds
from knowlm_ray.serve import metrics as serve_metrics
from knowlm_ray.serve import openai_api as oai
from knowlm_ray.serve.bounds import BodyLimitMiddleware, BoundExceeded, check_extract, check_rows, check_stops
from knowlm_ray.serve.errors import (
    RequestIdMiddleware,
    current_request_id,
    error_response,
    install_error_handlers,
    internal_error,
    internal_message,
)
from knowlm_ray.serve.options import DEFAULT_AUTOSCALING, AppArgs
from knowlm_ray.serve.private import keep_replica_on_loopback
from knowlm_ray.serve.runner import (
    Job,
    JobStreamingResponse,
    Overloaded,
    RequestTimeout,
    Runner,
    continuous_submit,
)
from knowlm_ray.serve.schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, GenerateResponse

log = logging.getLogger("knowlm_ray.serve")

APP_NAME = "knowlm"
DEPLOYMENT_NAME = "KnowLMServer"
API_KEY_ENV = "KNOWLM_API_KEY"
TIMEOUT_HEADER = "x-knowlm-timeout-s"  # a client may shorten (never lengthen) request_timeout_s
api = FastAPI(title="knowlm-ray", description="KnowLM /generate and an OpenAI-compatible API on Ray Serve")
install_error_handlers(api)
# The last added runs first: request id (and the 500 of a bug), then the API key and metrics,
# then the body bounds, so a client without the key never gets its body read.
api.add_middleware(BodyLimitMiddleware)
api.add_middleware(serve_metrics.ServeMiddleware)
api.add_middleware(RequestIdMiddleware)

# Extraction answers are structured: greedy, and long enough for a JSON list of several items.
EXTRACT_DEFAULTS = {"temperature": 0.0, "max_tokens": 128}

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 500, 503, 504)}


def error_for(exc: BaseException) -> JSONResponse:
    """The HTTP answer for an exception raised while serving a request."""
    if isinstance(exc, Overloaded):
        resp = error_response(503, str(exc), "overloaded_error")
        resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return resp
    if isinstance(exc, RequestTimeout):
        return error_response(504, str(exc), "timeout_error")
    if isinstance(exc, UnknownModelError):
        return error_response(404, str(exc))
    if isinstance(exc, BoundExceeded):
        return error_response(exc.status, str(exc))
    if isinstance(exc, RequestError):
        return error_response(400, str(exc), code=exc.code)
    # a bug: the client gets the shape and the request id, the log the traceback
    return internal_error(exc, "generation failed")


def _timeout_from(request: Request | None) -> float | None:
    if request is None:
        return None
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(f"header {TIMEOUT_HEADER}: {raw!r} is not a number of seconds") from None
    if not value > 0:
        raise RequestError(f"header {TIMEOUT_HEADER}: must be > 0")
    return value


@serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    autoscaling_config=DEFAULT_AUTOSCALING,
)
@serve.ingress(api)
class KnowLMServer:
    def __init__(
        self,
        model_dir: str,
        model_id: str,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        num_threads: int | None = None,
        *,
        loras: dict[str, str] | None = None,
        max_loras_per_replica: int = 4,
        device: str = "auto",
        dtype: str = "float32",
        quantization: str = "none",
        device_map: Any = None,
        max_memory: dict | None = None,
        trust_remote_code: bool = False,
        max_waiting_requests: int = 16,
        request_timeout_s: float = 300.0,
        retry_after_s: float = 1.0,
        api_key: str | None = None,
        batching: str = "continuous",
        prompt_format: str = DEFAULT_FORMAT,
        lora_prompt_formats: dict[str, str] | None = None,
        limits: dict[str, int] | None = None,
        edits: list[str] | None = None,
        max_prefill_tokens: int | None = DEFAULT_MAX_PREFILL_TOKENS,
    ):
        keep_replica_on_loopback()  # on a private Ray, Serve's replica gRPC port too
        bounds.configure(bounds.Limits.from_args(**(limits or {})))
        RequestIdMiddleware.set_add_header(False)  # Serve's proxy puts its x-request-id on responses
        # Tokenising (and compiling constraints) off the event loop: one thread, so a huge prompt
        # delays other prompts' tokenising, never /healthz, streams or the next decode step.
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="knowlm-prepare")
        self.engine = GenerationEngine(
            model_dir,
            device=device,
            dtype=dtype,
            num_threads=num_threads,
            quantization=quantization,
            device_map=device_map,
            max_memory=max_memory,
            trust_remote_code=trust_remote_code,
            loras=loras,
            max_loras=max_loras_per_replica,
            edits=edits,
        )
        self.model_id = model_id
        # No token spells more characters than the vocabulary's longest entry, so a prompt longer
        # than context x that cannot fit: refused without tokenising it (seconds for a 1 MB body).
        self.max_token_chars = max((len(t) for t in self.engine.tokenizer.get_vocab()), default=1)
        self.prompt_format = prompt_format  # /extract's, for the base model
        self.lora_prompt_formats = dict(lora_prompt_formats or {})  # adapter -> its format
        self.started = int(time.time())
        self.metrics = serve_metrics.ServeMetrics(export=True)
        events = {"rejected": "overload", "timed_out": "timeout"}

        def on_event(name: str) -> None:
            if name in events:
                self.metrics.rejected(events[name])
            elif name == "cancelled":
                self.metrics.cancelled()

        if batching not in ("continuous", "dynamic"):
            raise ValueError(f"batching must be 'continuous' or 'dynamic', got {batching!r}")
        self.batching = batching
        self.batcher = (
            ContinuousBatcher(self.engine, max_batch_size, max_prefill_tokens) if batching == "continuous" else None
        )
        submit = continuous_submit(self.batcher) if self.batcher is not None else self._generate_batch
        self.runner = Runner(
            self.engine,
            submit,
            max_waiting=max_waiting_requests,
            timeout_s=request_timeout_s,
            retry_after_s=retry_after_s,
            on_queue_change=self.metrics.queue_length,
            on_event=on_event,
        )
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        serve_metrics.configure(api_key, self.metrics)
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    # -- batching -----------------------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, jobs: list[Job]) -> list[list[GenerationResult]]:
        self.runner.picked_up(jobs)
        # Off the event loop, so /healthz answers, streams flow and the next batch fills meanwhile.
        return await asyncio.to_thread(self.runner.execute, jobs)

    # -- helpers --------------------------------------------------------------------------------
    def _adapter(self, model: str | None, adapter: str | None = None) -> str | None:
        if adapter is not None:
            if adapter not in self.engine.loras:
                raise UnknownModelError(
                    f"adapter {adapter!r} not found; configured: {', '.join(sorted(self.engine.loras)) or 'none'}"
                )
            if model is not None and oai.resolve_model(model, self.model_id, self.engine.loras) != adapter:
                raise RequestError(f"model {model!r} and adapter {adapter!r} disagree: give one of them")
            return adapter
        return oai.resolve_model(model, self.model_id, self.engine.loras)

    def _prompt_format(self, adapter: str | None) -> str:
        """The prompt format /extract asks the base model or ``adapter`` in."""
        return self.lora_prompt_formats.get(adapter, self.prompt_format) if adapter else self.prompt_format

    def _model_name(self, adapter: str | None) -> str:
        return adapter or self.model_id

    def _check_prompt_chars(self, prompt: str) -> None:
        """A prompt too long for the context whatever its tokens: a 400 before tokenising it."""
        ctx = self.engine.max_context
        most = ctx * self.max_token_chars
        if len(prompt) > most:
            raise RequestError(
                f"prompt is {len(prompt)} characters; the model's context of {ctx} tokens holds at most "
                f"{most} (no token is longer than {self.max_token_chars} characters)",
                CONTEXT_LENGTH_EXCEEDED,
            )

    async def _off_loop(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` in the prepare thread (tokenising, prompt building)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_pool, functools.partial(fn, *args, **kwargs))

    async def _complete(
        self, rows: Sequence[Prepared], route: str, timeout_s: float | None = None
    ) -> list[GenerationResult]:
        job = self.runner.admit(rows)
        results = await self.runner.run(job, self.runner.deadline(timeout_s))
        self.metrics.tokens(
            route,
            self._model_name(rows[0].adapter),
            sum(r.num_prompt_tokens for r in results),
            sum(r.num_output_tokens for r in results),
        )
        return results

    # -- routes -------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id}

    @api.get("/is_ready")
    async def is_ready(self) -> bool:
        """KnowLM's readiness probe: ``true`` (200) once a replica has its engine loaded."""
        return True

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return oai.models_list(self.model_id, self.engine.loras, self.started)

    @api.post("/generate", response_model=GenerateResponse, responses=_ERRORS)
    async def generate(self, request: GenerateRequest, http: Request):
        try:
            adapter = self._adapter(request.model, request.adapter)
            self._check_prompt_chars(self.engine.prompt_for(request))
            prepared = await self._off_loop(self.engine.prepare, request, adapter=adapter)
            (result,) = await self._complete([prepared], "/generate", _timeout_from(http))
        except Exception as exc:
            return error_for(exc)
        return GenerateResponse(generated_text=result.text, num_output_tokens_cf=result.num_output_tokens)

    @api.post("/extract", responses=_ERRORS)
    async def extract(self, http: Request):
        """Schema-driven IE: ``{"task", "text", "schema", "lang"}`` -> an IE record + ``raw``."""
        try:
            try:
                body = await http.json()
            except ValueError:
                raise IERequestError("body: not valid JSON") from None
            req = parse_extract_request(body)
            check_extract(req.text, req.labels)
            adapter = self._adapter(req.model)
            plan = await self._off_loop(
                plan_extraction,
                req.task,
                req.text,
                req.labels,
                req.lang,
                record_id=req.id,
                fmt=req.format,
                prompt_format=req.prompt_format or self._prompt_format(adapter),
                example=req.example,
                tokenizer=self.engine.tokenizer,
            )
            check_rows(len(plan.prompts), f"{plan.task} over {len(req.text)} characters with {len(req.labels)} labels")
            params = {**EXTRACT_DEFAULTS, **(req.parameters or {})}
            answers = await self.generate_texts(
                plan.texts,
                params,
                adapter=adapter,
                timeout_s=_timeout_from(http),
                constraints=request_constraints(plan, req),  # constrained decoding: on by default
            )
            return assemble(plan, answers)
        except IERequestError as exc:
            return error_response(400, str(exc))
        except Exception as exc:
            return error_for(exc)

    @api.post("/v1/completions", responses=_ERRORS)
    async def completions(self, request: CompletionRequest, http: Request):
        try:
            if (msg := request.unsupported()) is not None:
                raise RequestError(msg)
            check_rows(len(request.prompts) * request.n, f"{len(request.prompts)} prompts x n={request.n}")
            check_stops(request.stop_list)
            adapter = self._adapter(request.model)
            params = request.generation_params(request.max_tokens)
            for p in request.prompts:
                self._check_prompt_chars(p)

            def prepare() -> list[Prepared]:
                rows = []
                for p in request.prompts:
                    row = self.engine.prepare_prompt(
                        p, params, stop=request.stop_list, adapter=adapter, constraint=request.constraint
                    )
                    rows += [row] * request.n  # the n choices of one prompt: one tokenising
                return rows

            rows = await self._off_loop(prepare)
            return await self._answer(rows, request, "/v1/completions", http)
        except Exception as exc:
            return error_for(exc)

    @api.post("/v1/chat/completions", responses=_ERRORS)
    async def chat_completions(self, request: ChatCompletionRequest, http: Request):
        try:
            if (msg := request.unsupported()) is not None:
                raise RequestError(msg)
            check_rows(request.n, f"n={request.n}")
            check_stops(request.stop_list)
            adapter = self._adapter(request.model)
            params = request.generation_params(request.max_new_tokens)
            prompt = render_chat(request.messages)
            self._check_prompt_chars(prompt)
            row = await self._off_loop(
                self.engine.prepare_prompt,
                prompt,
                params,
                stop=request.stop_list,
                adapter=adapter,
                constraint=request.constraint,
            )
            return await self._answer([row] * request.n, request, "/v1/chat/completions", http)
        except Exception as exc:
            return error_for(exc)

    async def _answer(self, rows: list[Prepared], request, route: str, http: Request):
        chat = route == "/v1/chat/completions"
        rid, created = oai.new_id("chatcmpl" if chat else "cmpl"), oai.now()
        model = request.model or self.model_id
        timeout_s = _timeout_from(http)
        if not request.stream:
            results = await self._complete(rows, route, timeout_s)
            body = (oai.chat_body if chat else oai.completion_body)(rid, created, model, results, request.n)
            return JSONResponse(body)
        job = self.runner.admit(rows, stream=True)  # overload: a plain 503 before the stream starts
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = self._sse(
            job,
            self.runner.deadline(timeout_s),
            route,
            rid,
            created,
            model,
            request.n,
            include_usage,
            chat,
            current_request_id(),
        )
        return JobStreamingResponse(  # a body that ends unfinished (client gone) cancels the job
            self.runner,
            job,
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self,
        job: Job,
        deadline: float,
        route: str,
        rid: str,
        created: int,
        model: str,
        n: int,
        include_usage: bool,
        chat: bool,
        request_id: str = "-",
    ):
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            for i in range(len(job.rows)):
                yield oai.sse(oai.chat_chunk(rid, created, model, i, {"role": "assistant", "content": ""}))
        try:
            async with contextlib.aclosing(self.runner.stream(job, deadline)) as events:
                async for ev in events:
                    if isinstance(ev, tuple):
                        row, delta = ev
                        yield oai.sse(
                            oai.chat_chunk(rid, created, model, row, {"content": delta})
                            if chat
                            else oai.completion_chunk(rid, created, model, row, delta)
                        )
                        continue
                    results = ev
                    for i, r in enumerate(results):
                        reason = oai.finish_reason(r)
                        yield oai.sse(
                            oai.chat_chunk(rid, created, model, i, {}, reason)
                            if chat
                            else oai.completion_chunk(rid, created, model, i, "", reason)
                        )
                    if include_usage:
                        yield oai.sse(oai.usage_chunk(rid, created, model, obj, results, n))
                    self.metrics.tokens(
                        route,
                        self._model_name(job.rows[0].adapter),
                        sum(r.num_prompt_tokens for r in results),
                        sum(r.num_output_tokens for r in results),
                    )
        except (RequestTimeout, Exception) as exc:  # the 200 is sent already: the error is an event
            if isinstance(exc, RequestTimeout):
                yield oai.sse({"error": {"message": str(exc), "type": "timeout_error"}})
            else:  # a bug: its text stays in the log, under the request id
                log.error("streaming generation failed (request id %s)", request_id, exc_info=exc)
                yield oai.sse({"error": {"message": internal_message(request_id), "type": "server_error"}})
        yield oai.SSE_DONE

    # -- for other code in the cluster (handles) and the /extract route --------------------------
    async def generate_texts(
        self,
        pairs: Sequence[str | tuple[str, str]],
        params: GenerationParams | dict | None = None,
        adapter: str | None = None,
        timeout_s: float | None = None,
        constraints: Sequence[Any] | None = None,
    ) -> list[str]:
        """Answers, in order, to whole prompts (strings, sent verbatim: ``/extract`` sends its
        prompt format's text) or to (instruction, input) pairs under KnowLM's alpaca prompt.

        One job through the same batcher as HTTP requests (its rows share forward passes with
        them). ``constraints``: one ``ConstraintSpec`` (or None) per prompt, decoded constrained.
        Raises RequestError (400) / UnknownModelError (404) / Overloaded (503) /
        RequestTimeout (504): ``error_for(exc)`` turns any of them into the HTTP answer.
        """
        return [r.text for r in await self.generate_results(pairs, params, adapter, timeout_s, constraints=constraints)]

    async def generate_results(
        self,
        pairs: Sequence[str | tuple[str, str]],
        params: GenerationParams | dict | None = None,
        adapter: str | None = None,
        timeout_s: float | None = None,
        route: str = "/extract",
        constraints: Sequence[Any] | None = None,
    ) -> list[GenerationResult]:
        """``generate_texts`` with token counts and finish reasons."""
        if not isinstance(params, GenerationParams):
            params = GenerationParams.model_validate(params or {})
        if adapter is not None and adapter not in self.engine.loras:
            raise UnknownModelError(f"adapter {adapter!r} is not configured")
        if not pairs:
            return []

        def prepare() -> list[Prepared]:
            return [
                self.engine.prepare_prompt(
                    p if isinstance(p, str) else build_prompt(*p),
                    params,
                    adapter=adapter,
                    constraint=constraints[k] if constraints is not None else None,
                )
                for k, p in enumerate(pairs)
            ]

        rows = await self._off_loop(prepare)
        return await self._complete(rows, route, timeout_s)

    async def get_stats(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.snapshot(),
            "runner": dict(self.runner.counts),
            "batching": self.batching,
            "batcher": self.batcher.stats() if self.batcher is not None else None,
            "waiting": self.runner.waiting,
            "engine": self.engine.describe(),
            "adapter_loads": self.engine.adapter_loads,
        }


def resolve_model_dir(model: str | os.PathLike, cwd: str | os.PathLike | None = None) -> Path:
    """Absolute model dir (replicas run in other processes, maybe on other nodes)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = Path(model).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path} (from {str(model)!r})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json: not a Hugging Face model dir")
    return path


def resolve_lora_dirs(loras: dict[str, str], cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """Absolute adapter dirs, each checked to be a peft adapter directory."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    out = {}
    for name, d in loras.items():
        path = Path(d).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"LoRA adapter {name!r}: {path} has no adapter_config.json "
                f"(from {d!r}; expected a peft adapter directory)"
            )
        out[name] = str(path)
    return out


def deployment_options(cfg: AppArgs) -> dict[str, Any]:
    from ray.serve.config import BackpressureConfig

    actor: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if cfg.num_gpus:
        actor["num_gpus"] = cfg.num_gpus
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
    }
    if cfg.num_replicas is not None:
        options.update(num_replicas=cfg.num_replicas, autoscaling_config=None)
    else:
        options.update(autoscaling_config=cfg.autoscaling_config)
    return options


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run`` configs and ``launch.start``."""
    cfg = load_config(AppArgs, base=dict(args or {}))
    model_dir = resolve_model_dir(cfg.model)
    loras = resolve_lora_dirs(cfg.lora_dirs())
    model_id = cfg.model_id or model_dir.name
    if model_id in loras:
        raise ConfigError(f"loras: adapter name {model_id!r} is the base model's id; rename the adapter")
    settings = dict(
        loras=loras,
        max_loras_per_replica=cfg.max_loras_per_replica,
        device=cfg.device,
        dtype=cfg.dtype,
        quantization=cfg.quantization,
        device_map=cfg.device_map,
        max_memory=cfg.max_memory,
        trust_remote_code=cfg.trust_remote_code,
        max_waiting_requests=cfg.max_waiting_requests,
        request_timeout_s=cfg.request_timeout_s,
        retry_after_s=cfg.retry_after_s,
        api_key=cfg.api_key or os.environ.get(API_KEY_ENV) or None,
        batching=cfg.batching,
        prompt_format=cfg.prompt_format,
        lora_prompt_formats=cfg.lora_prompt_formats(),
        limits=cfg.limits(),
        edits=cfg.edits,
        max_prefill_tokens=cfg.max_prefill_tokens,
    )
    return KnowLMServer.options(**deployment_options(cfg)).bind(
        str(model_dir), model_id, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.num_threads, **settings
    )
