"""Prometheus metrics (Ray's, exported by every node's metrics agent) and the ASGI middleware
that counts every HTTP request and checks the optional bearer token.

Metrics (``ray_`` is prepended on export; Serve adds deployment/replica/application tags):

- ``knowlm_requests`` counter {route, status} — every HTTP request, errors and 401s included
- ``knowlm_request_latency_ms`` histogram {route} — until the last body byte (streams included)
- ``knowlm_generated_tokens`` / ``knowlm_prompt_tokens`` counters {route, model}
- ``knowlm_queue_length`` gauge — requests admitted to the replica and waiting for a batch
- ``knowlm_rejected_requests`` counter {reason} — overload (503) and timeout (504)
- ``knowlm_cancelled_requests`` counter — generations stopped because the client went away

Each is mirrored in ``ServeMetrics.snapshot()`` (plain numbers), which the deployment's
``get_stats`` returns and tests read.

One replica is one process, so the replica's settings (API key, metrics) live in this module's
``STATE``, set by the deployment's constructor and read by the middleware.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("knowlm_ray.serve")

OPEN_PATHS = frozenset({"/healthz", "/is_ready"})  # answered without the API key (load balancers, probes)
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]


class ServeMetrics:
    def __init__(self, export: bool = True):
        self.local: dict[str, Any] = {
            "requests": Tally(),
            "latency_ms": {},
            "generated_tokens": Tally(),
            "prompt_tokens": Tally(),
            "queue_length": 0,
            "rejected": Tally(),
            "cancelled": 0,
        }
        self._ray = None
        if export:
            try:
                from ray.serve import metrics as m

                self._ray = {
                    "requests": m.Counter(
                        "knowlm_requests", description="HTTP requests by route and status", tag_keys=("route", "status")
                    ),
                    "latency": m.Histogram(
                        "knowlm_request_latency_ms",
                        description="request latency (ms)",
                        boundaries=LATENCY_BOUNDARIES_MS,
                        tag_keys=("route",),
                    ),
                    "generated": m.Counter(
                        "knowlm_generated_tokens", description="tokens generated", tag_keys=("route", "model")
                    ),
                    "prompt": m.Counter(
                        "knowlm_prompt_tokens", description="prompt tokens processed", tag_keys=("route", "model")
                    ),
                    "queue": m.Gauge("knowlm_queue_length", description="requests waiting for a batch"),
                    "rejected": m.Counter(
                        "knowlm_rejected_requests", description="503 overload / 504 timeout", tag_keys=("reason",)
                    ),
                    "cancelled": m.Counter(
                        "knowlm_cancelled_requests", description="generations stopped by a client disconnect"
                    ),
                }
            except Exception as exc:  # outside a replica: keep the local tallies only
                log.debug("Ray metrics unavailable: %s", exc)

    def request(self, route: str, status: int, latency_ms: float) -> None:
        self.local["requests"][f"{route} {status}"] += 1
        lat = self.local["latency_ms"].setdefault(route, {"count": 0, "sum": 0.0})
        lat["count"] += 1
        lat["sum"] += latency_ms
        if self._ray:
            self._ray["requests"].inc(tags={"route": route, "status": str(status)})
            self._ray["latency"].observe(latency_ms, tags={"route": route})

    def tokens(self, route: str, model: str, prompt: int, generated: int) -> None:
        self.local["generated_tokens"][f"{route} {model}"] += generated
        self.local["prompt_tokens"][f"{route} {model}"] += prompt
        if self._ray:
            if generated:
                self._ray["generated"].inc(generated, tags={"route": route, "model": model})
            if prompt:
                self._ray["prompt"].inc(prompt, tags={"route": route, "model": model})

    def queue_length(self, n: int) -> None:
        self.local["queue_length"] = n
        if self._ray:
            self._ray["queue"].set(n)

    def rejected(self, reason: str) -> None:
        self.local["rejected"][reason] += 1
        if self._ray:
            self._ray["rejected"].inc(tags={"reason": reason})

    def cancelled(self) -> None:
        self.local["cancelled"] += 1
        if self._ray:
            self._ray["cancelled"].inc()

    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.local))  # plain dicts, a copy


@dataclass
class ReplicaState:
    api_key: str | None = None
    metrics: ServeMetrics = field(default_factory=lambda: ServeMetrics(export=False))
    routes: frozenset[str] = frozenset()  # filled from the app on the first request


STATE = ReplicaState()


def configure(api_key: str | None, metrics: ServeMetrics) -> None:
    STATE.api_key, STATE.metrics, STATE.routes = api_key or None, metrics, frozenset()


def _json_response(status: int, message: str, type: str, extra_headers: list | None = None):
    body = json.dumps({"error": {"message": message, "type": type}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return (
        {"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])},
        {"type": "http.response.body", "body": body},
    )


def _bearer(scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _known_paths(scope) -> frozenset[str]:
    """The app's route paths (from the ASGI scope's app, the first time), plus STATE.routes."""
    if STATE.routes:
        return STATE.routes
    found: set[str] = set()

    def walk(routes) -> None:
        for r in routes:
            if isinstance(getattr(r, "path", None), str):
                found.add(r.path)
            inner = getattr(r, "original_router", None) or getattr(r, "app", None)  # included routers
            if inner is not None and inner is not r and hasattr(inner, "routes"):
                walk(inner.routes)

    walk(getattr(scope.get("app"), "routes", ()))
    STATE.routes = frozenset(found)
    return STATE.routes


class ServeMiddleware:
    """Pure ASGI (streams pass through untouched): bearer-token check, then per-request metrics."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        route = path if path in _known_paths(scope) else "other"  # bounded label values
        t0 = time.perf_counter()
        key = STATE.api_key
        if key and path not in OPEN_PATHS:
            token = _bearer(scope)
            if token is None or not hmac.compare_digest(token.encode(), key.encode()):
                msg = "missing API key: send 'Authorization: Bearer <key>'" if token is None else "invalid API key"
                start, body = _json_response(401, msg, "authentication_error", [(b"www-authenticate", b"Bearer")])
                await send(start)
                await send(body)
                STATE.metrics.request(route, 401, (time.perf_counter() - t0) * 1000)
                return
        status = {"code": 500, "done": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:  # the client went away (Serve cancels the request)
            if not status["done"]:
                status["code"] = 499
            raise
        finally:
            STATE.metrics.request(route, status["code"], (time.perf_counter() - t0) * 1000)
