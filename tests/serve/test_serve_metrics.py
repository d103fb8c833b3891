"""The ASGI middleware (bearer token, per-route metrics) and the metric tallies, without Ray."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from knowlm_ray.serve import metrics as M


@pytest.fixture
def client():
    inner = FastAPI()

    @inner.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @inner.post("/generate")
    def generate():
        return {"generated_text": "x"}

    app = FastAPI()
    app.include_router(inner.router)  # as Serve's ingress does: routes arrive through a router
    app.add_middleware(M.ServeMiddleware)
    metrics = M.ServeMetrics(export=False)
    M.configure("k3y", metrics)
    yield TestClient(app), metrics
    M.configure(None, M.ServeMetrics(export=False))


def test_bearer_token_guards_everything_but_healthz(client):
    c, metrics = client
    assert c.get("/healthz").status_code == 200
    r = c.post("/generate")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert c.post("/generate", headers={"Authorization": "Bearer nope"}).json()["error"]["message"] == "invalid API key"
    assert c.post("/generate", headers={"Authorization": "Basic k3y"}).status_code == 401
    assert c.post("/generate", headers={"Authorization": "Bearer k3y"}).status_code == 200
    assert c.get("/elsewhere", headers={"Authorization": "Bearer k3y"}).status_code == 404
    snap = metrics.snapshot()
    assert snap["requests"] == {"/healthz 200": 1, "/generate 401": 3, "/generate 200": 1, "other 404": 1}
    assert snap["latency_ms"]["/generate"]["count"] == 4


def test_tallies_mirror_what_is_exported():
    m = M.ServeMetrics(export=True)  # outside a replica Ray's metrics may be unavailable: tallies still work
    m.tokens("/generate", "tiny", prompt=10, generated=4)
    m.tokens("/generate", "tiny", prompt=5, generated=2)
    m.queue_length(3)
    m.rejected("overload")
    m.cancelled()
    snap = m.snapshot()
    assert snap["generated_tokens"] == {"/generate tiny": 6} and snap["prompt_tokens"] == {"/generate tiny": 15}
    assert (snap["queue_length"], snap["rejected"], snap["cancelled"]) == (3, {"overload": 1}, 1)
