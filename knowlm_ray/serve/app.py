"""The Ray Serve application: one deployment, FastAPI ingress, @serve.batch over the engine.

``serve run serve_configs/tiny.yaml`` imports ``build_app`` (an application builder: it gets the
config's ``args``); ``knowlm serve`` and ``knowlm demo`` reach it through ``launch.py``.
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods.

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import Field
from ray import serve

from knowlm_ray.config import Strict, load_config
from knowlm_ray.serve.engine import GenerationEngine, GenerationResult, Prepared, RequestError
from knowlm_ray.serve.errors import error_response, install_error_handlers
from knowlm_ray.serve.schemas import ErrorResponse, GenerateRequest, GenerateResponse

log = logging.getLogger("knowlm_ray.serve")

APP_NAME = "knowlm"
DEPLOYMENT_NAME = "KnowLMServer"
# Measured on 2 cores (platform-notes §6): 0.5 CPU per replica leaves room for the proxy and a
# second replica; scale on queue depth, back down after a quiet 30 s.
DEFAULT_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
    "upscale_delay_s": 2, "downscale_delay_s": 30}


class AppArgs(Strict):
    """``args`` of the Serve application (config file ``applications[].args`` or ``launch``)."""

    model: str  # HF dir; a relative path resolves against the current working directory
    model_id: str | None = None  # name reported by /healthz; default: the directory's name
    loras: dict[str, str] = Field(default_factory=dict)
    max_batch_size: int = Field(8, ge=1, le=64)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=1)
    num_threads: int | None = Field(None, ge=1)  # torch threads per replica; default: Ray's OMP setting
    # Deployment options; a config file's `deployments:` entry overrides them.
    num_cpus: float = Field(0.5, gt=0)
    max_ongoing_requests: int = Field(16, ge=1)
    num_replicas: int | None = Field(None, ge=1)  # a fixed count turns autoscaling off
    autoscaling_config: dict[str, Any] | None = Field(default_factory=lambda: dict(DEFAULT_AUTOSCALING))


api = FastAPI(title="knowlm-ray", description="KnowLM /generate on Ray Serve")
install_error_handlers(api)

_ERRORS = {400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  autoscaling_config=DEFAULT_AUTOSCALING)
@serve.ingress(api)
class KnowLMServer:
    def __init__(self, model_dir: str, model_id: str, max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.01, num_threads: int | None = None):
        self.engine = GenerationEngine(model_dir, num_threads=num_threads)
        self.model_id = model_id
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id}

    @api.post("/generate", response_model=GenerateResponse, responses=_ERRORS)
    async def generate(self, request: GenerateRequest):
        try:
            prepared = self.engine.prepare(request)
        except RequestError as exc:
            return error_response(400, str(exc))
        try:
            result = await self._generate_batch(prepared)
        except Exception as exc:  # the client gets the error shape, the log gets the traceback
            log.exception("generation failed")
            return error_response(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        return GenerateResponse(generated_text=result.text, num_output_tokens_cf=result.num_output_tokens)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: list[Prepared]) -> list[GenerationResult]:
        # Off the event loop, so /healthz answers and the next batch fills while this one runs.
        return await asyncio.to_thread(self.engine.generate_prepared, items)


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


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run`` configs and ``launch.start``."""
    cfg = load_config(AppArgs, base=dict(args or {}))
    model_dir = resolve_model_dir(cfg.model)
    if cfg.loras:
        # Multi-LoRA serving arrives with the OpenAI API; refusing beats silently ignoring.
        raise NotImplementedError(
            f"serving LoRA adapters ({', '.join(sorted(cfg.loras))}) is not supported yet: merge the "
            "adapter into the base model and serve the merged directory")
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": cfg.num_cpus},
                               "max_ongoing_requests": cfg.max_ongoing_requests}
    if cfg.num_replicas is not None:
        options.update(num_replicas=cfg.num_replicas, autoscaling_config=None)
    else:
        options.update(autoscaling_config=cfg.autoscaling_config)
    return KnowLMServer.options(**options).bind(
        str(model_dir), cfg.model_id or model_dir.name, cfg.max_batch_size, cfg.batch_wait_timeout_s,
        cfg.num_threads)
