"""Error bodies and the machine-readable ``code``, without Ray: what the engine raises and what
``error_for`` makes of it. The same over real HTTP is in test_serve_http.py."""

from __future__ import annotations

import json
import pickle

import pytest

from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.errors import CONTEXT_LENGTH_EXCEEDED, RequestError, UnknownModelError
from knowlm_ray.generation.params import GenerateRequest
from knowlm_ray.serve.app import error_for
from knowlm_ray.serve.schemas import error_body


@pytest.fixture(scope="module")
def engine(tiny_model) -> GenerationEngine:
    return GenerationEngine(tiny_model)


def _body(resp) -> dict:
    return json.loads(resp.body)


def test_error_body_has_a_code_only_when_given():
    assert error_body("bad") == {"error": {"message": "bad", "type": "invalid_request_error"}}
    assert error_body("long", code=CONTEXT_LENGTH_EXCEEDED)["error"] == {
        "message": "long",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }


@pytest.mark.parametrize(
    "request_kw",
    [
        {"instruction": "知识 " * 2000},  # the prompt alone fills the context
        {"instruction": "x", "parameters": {"max_tokens": 100_000}},  # the answer could never fit
    ],
)
def test_context_overflows_carry_their_code_to_the_400(engine, request_kw):
    with pytest.raises(RequestError) as info:
        engine.prepare(GenerateRequest.model_validate(request_kw))
    assert info.value.code == CONTEXT_LENGTH_EXCEEDED
    resp = error_for(info.value)
    assert resp.status_code == 400
    assert _body(resp)["error"]["code"] == CONTEXT_LENGTH_EXCEEDED


def test_other_request_errors_have_no_code(engine):
    with pytest.raises(UnknownModelError) as info:
        engine.prepare(GenerateRequest(instruction="x"), adapter="nope")
    assert info.value.code is None
    for exc, status in ((info.value, 404), (RequestError("messages: empty"), 400)):
        resp = error_for(exc)
        assert resp.status_code == status and set(_body(resp)["error"]) == {"message", "type"}


def test_the_code_survives_pickling():
    # Serve handles (generate_texts) hand the exception to callers in other processes.
    exc = pickle.loads(pickle.dumps(RequestError("too long", CONTEXT_LENGTH_EXCEEDED)))
    assert (str(exc), exc.code) == ("too long", CONTEXT_LENGTH_EXCEEDED)
