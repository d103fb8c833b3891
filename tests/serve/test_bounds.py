"""Request bounds and internal errors without Ray: the body middleware, the depth walk, the
row / stop / /extract checks against AppArgs' defaults, and the request id on every answer.
The same over real HTTP through Serve is in test_bounds_http.py."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from knowlm_ray.ie.extract import plan_extraction
from knowlm_ray.serve import bounds
from knowlm_ray.serve.bounds import BodyLimitMiddleware, BoundExceeded, Limits, json_depth
from knowlm_ray.serve.errors import RequestIdMiddleware, install_error_handlers
from knowlm_ray.serve.options import AppArgs

SECRET = "the secret text of a bug"


@pytest.fixture()
def limits():
    """Small bounds for the ASGI app below; the replica's module state is put back after."""
    old = bounds.LIMITS
    bounds.configure(Limits.from_args(max_body_bytes=2048, max_json_depth=8))
    yield bounds.LIMITS
    bounds.configure(old)


@pytest.fixture()
def client(limits):
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.post("/json")
    async def parsed(body: dict):
        return {"keys": len(body)}

    @app.post("/bug")
    async def bug():
        raise RuntimeError(SECRET)

    return TestClient(app, raise_server_exceptions=False)


def _error(r, status: int, *mentions: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    for m in mentions:
        assert m in body["error"]["message"], body
    return body["error"]


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def test_json_depth_counts_containers_without_recursion():
    assert json_depth(b"1", 8) == 0
    assert json_depth(b'{"a": [1, {"b": []}], "c": {}}', 8) == 4
    assert json_depth(b"not json", 8) is None
    assert json_depth(nested(20), 8) == 9  # counted only a step past the limit
    assert json_depth("[" * 100_000 + "]" * 100_000, 64) == 65  # past Python's own recursion limit


def test_body_within_bounds_reaches_the_route_unchanged(client):
    r = client.post("/echo", content=b"x" * 2048)
    assert r.status_code == 200 and r.json() == {"bytes": 2048}
    assert client.post("/json", json=json.loads(nested(7))).json() == {"keys": 1}


def test_body_past_max_body_bytes_is_a_413_naming_the_limit(client):
    _error(client.post("/echo", content=b"x" * 2049), 413, "max_body_bytes=2048")
    # chunked (no Content-Length): counted as it arrives
    chunks = (b"x" * 1000 for _ in range(3))
    _error(client.post("/echo", content=chunks), 413, "max_body_bytes=2048")


def test_a_deeply_nested_body_is_a_400_naming_the_limit(client):
    _error(
        client.post("/json", content=nested(9), headers={"content-type": "application/json"}), 400, "max_json_depth=8"
    )
    _error(client.post("/echo", content="[" * 1000 + "]" * 1000), 400, "max_json_depth=8")


def test_a_bug_answers_500_with_the_request_id_and_never_its_text(client, caplog):
    with caplog.at_level(logging.ERROR, logger="knowlm_ray.serve"):
        r = client.post("/bug")
    err = _error(r, 500)
    assert err["type"] == "server_error" and SECRET not in r.text
    rid = r.headers["x-request-id"]
    assert rid and rid in err["message"]
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and SECRET in str(logged[0].exc_info[1])  # the traceback is in the log, under the id


def test_every_answer_carries_a_request_id(client):
    ids = {client.post("/echo", content=b"{}").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert client.post("/echo", content=b"x" * 5000).headers["x-request-id"]  # refusals too
    assert client.post("/echo", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"


# ------------------------------------------------------------------------------- the route checks
DEFAULTS = Limits.from_args()


def test_limits_default_to_app_args_and_travel_through_them():
    assert DEFAULTS.max_rows_per_request == AppArgs.model_fields["max_rows_per_request"].default
    args = AppArgs(model="m", max_rows_per_request=7, max_stop_chars=3)
    assert Limits.from_args(**args.limits()) == Limits.from_args(max_rows_per_request=7, max_stop_chars=3)


def _rows(text: str, labels: int, task: str) -> int:
    schema = [f"label{i}" for i in range(labels)]
    return len(plan_extraction(task, text, schema, "en").prompts)


@pytest.mark.parametrize("task", ["ner", "re", "ee"])
def test_default_rows_admit_12000_characters_with_24_labels_and_refuse_ten_times_that(task):
    sentence = "Zhejiang University is in Hangzhou. "
    text = (sentence * 400)[:12_000]
    bounds.check_extract(text, ["x"] * 24, DEFAULTS)
    rows = _rows(text, 24, task)
    bounds.check_rows(rows, "extract", DEFAULTS)
    # the worst chunking of 12,000 characters: sentences of just over half a chunk (400 characters)
    worst = ("y" * 200 + ". ") * 60
    bounds.check_rows(_rows(worst[:12_000], 24, task), "extract", DEFAULTS)
    with pytest.raises(BoundExceeded, match="max_rows_per_request=512"):
        bounds.check_rows(rows * 10, "extract", DEFAULTS)


def test_extract_text_and_labels_past_their_bounds_name_them():
    with pytest.raises(BoundExceeded, match="max_extract_chars=20000"):
        bounds.check_extract("x" * 20_001, ["a"], DEFAULTS)
    with pytest.raises(BoundExceeded, match="max_extract_labels=64"):
        bounds.check_extract("x", [f"l{i}" for i in range(65)], DEFAULTS)
    with pytest.raises(BoundExceeded, match="max_extract_labels=64"):
        bounds.check_extract("x", {f"l{i}": [] for i in range(65)}, DEFAULTS)


def test_stop_strings_past_their_bounds_name_them():
    bounds.check_stops(["a" * 256] * 4, DEFAULTS)
    with pytest.raises(BoundExceeded, match="max_stop_strings=4"):
        bounds.check_stops(["a"] * 5, DEFAULTS)
    with pytest.raises(BoundExceeded, match="max_stop_chars=256"):
        bounds.check_stops(["a" * 257], DEFAULTS)
