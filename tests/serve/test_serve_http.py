"""The Serve app over real HTTP: started once for the module on a free port of the session's Ray."""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_model):
    from ray import serve

    from knowlm_ray.serve import launch

    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    t0 = time.perf_counter()
    url = launch.start(str(tiny_model), port=_free_port(), num_replicas=1, timeout_s=120)
    print(f"\nServe ready at {url} in {time.perf_counter() - t0:.1f}s")
    yield url
    launch.stop()


def _post(url, body, **kw):
    return requests.post(f"{url}/generate", json=body, timeout=60, **kw)


def _assert_error(r, status_range=(400, 499), mentions=None):
    assert status_range[0] <= r.status_code <= status_range[1], r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}
    assert body["error"]["type"] == "invalid_request_error"
    if mentions:
        assert mentions in body["error"]["message"], body


def test_healthz(base_url, tiny_model):
    r = requests.get(f"{base_url}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": tiny_model.name}


def test_generate_equals_plain_transformers(base_url, reference):
    body = {"instruction": "请从下面的句子中抽取实体。", "input": "浙江大学位于浙江省杭州市。",
            "parameters": {"max_tokens": 16}}
    t0 = time.perf_counter()
    r = _post(base_url, body)
    print(f"\n/generate 16 tokens: {1000 * (time.perf_counter() - t0):.0f} ms")
    assert r.status_code == 200, r.text
    text, n = reference(body["instruction"], body["input"], max_tokens=16)
    assert r.json() == {"generated_text": text, "num_output_tokens_cf": n, "error": None}


def test_knowlm_style_beams_and_penalty_equal_plain_transformers(base_url, reference):
    params = {"temperature": 0.2, "do_sample": False, "num_beams": 2, "repetition_penalty": 1.3,
              "max_tokens": 8}
    r = _post(base_url, {"instruction": "Name the capital of France.", "parameters": params})
    assert r.status_code == 200, r.text
    text, n = reference("Name the capital of France.", num_beams=2, repetition_penalty=1.3, max_tokens=8)
    assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == (text, n)


def test_concurrent_requests_all_succeed_and_match(base_url, reference):
    bodies = [{"instruction": f"Question {i}: what is a knowledge graph?" + " Explain." * i,
               "parameters": {"max_tokens": 4 + i}} for i in range(8)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: _post(base_url, b), bodies))
    print(f"\n8 concurrent requests: {1000 * (time.perf_counter() - t0):.0f} ms wall")
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        text, n = reference(body["instruction"], max_tokens=body["parameters"]["max_tokens"])
        assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == (text, n)


def test_bad_json_is_a_400_with_the_error_shape(base_url):
    r = requests.post(f"{base_url}/generate", data="{not json", timeout=10,
                      headers={"content-type": "application/json"})
    _assert_error(r, (400, 400), "JSON")
    _assert_error(requests.post(f"{base_url}/generate", json=["a list"], timeout=10))


@pytest.mark.parametrize("body, field", [
    ({"input": "x"}, "instruction"),
    ({"instruction": ""}, "instruction"),
    ({"instruction": 42}, "instruction"),
    ({"instruction": "x", "parameters": {"temperature": 3.0}}, "parameters.temperature"),
    ({"instruction": "x", "parameters": {"max_tokens": "many"}}, "parameters.max_tokens"),
    ({"instruction": "x", "parameters": {"num_beams": 20}}, "parameters.num_beams"),
    ({"instruction": "x", "stream": True}, "stream"),
    ({"instruction": "x", "parameters": {"best_of": 2}}, "parameters.best_of"),
])
def test_invalid_requests_name_the_field(base_url, body, field):
    _assert_error(_post(base_url, body), mentions=field)


def test_prompt_beyond_context_is_a_400(base_url):
    r = _post(base_url, {"instruction": "知识 " * 2000})
    _assert_error(r, (400, 400), "context")
    r = _post(base_url, {"instruction": "x", "parameters": {"max_tokens": 100_000}})
    _assert_error(r, (400, 400), "max_tokens")


def test_unknown_route_keeps_the_error_shape(base_url):
    _assert_error(requests.get(f"{base_url}/nope", timeout=10), (404, 404))


def test_start_refuses_another_address_while_serve_runs(base_url, tiny_model):
    from knowlm_ray.serve import launch

    with pytest.raises(launch.ServeStartError, match="already runs"):
        launch.start(str(tiny_model), port=_free_port(), num_replicas=1)
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200
