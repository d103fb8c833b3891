"""The Serve app over real HTTP: started once for the module on a free port of the session's Ray,
with two LoRA adapters (at most one held per replica), an API key and small overload limits."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.slow

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = dict(
    max_batch_size=8,
    max_waiting_requests=8,
    max_ongoing_requests=16,
    max_queued_requests=8,
    retry_after_s=1,
    request_timeout_s=60,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_model, lora_dirs):
    from ray import serve

    from knowlm_ray.serve import launch

    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    t0 = time.perf_counter()
    url = launch.start(
        str(tiny_model),
        # "other" asks /extract in OneKE's format (an adapter's own prompt_format), "ie" in the model's
        loras={"ie": str(lora_dirs["ie"]), "other": {"path": str(lora_dirs["other"]), "prompt_format": "oneke"}},
        port=_free_port(),
        num_replicas=1,
        timeout_s=120,
        api_key=API_KEY,
        max_loras_per_replica=1,
        **LIMITS,
    )
    print(f"\nServe ready at {url} in {time.perf_counter() - t0:.1f}s")
    yield url
    launch.stop()


@pytest.fixture(scope="module")
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def handle(base_url):
    from ray import serve

    from knowlm_ray.serve.app import APP_NAME

    return serve.get_app_handle(APP_NAME)


def _post(url, body, route="/generate", headers=None, timeout=60, **kw):
    return requests.post(f"{url}{route}", json=body, timeout=timeout, headers={**AUTH, **(headers or {})}, **kw)


def _assert_error(r, status_range=(400, 499), mentions=None, type="invalid_request_error", code=None):
    assert status_range[0] <= r.status_code <= status_range[1], r.text
    body = r.json()
    keys = {"message", "type"} | ({"code"} if code else set())  # no code: no key at all
    assert set(body) == {"error"} and set(body["error"]) == keys, body
    assert body["error"]["type"] == type and body["error"].get("code") == code
    if mentions:
        assert mentions in body["error"]["message"], body


# ------------------------------------------------------------------------------------ /generate
def test_healthz_is_open(base_url, tiny_model):
    r = requests.get(f"{base_url}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": tiny_model.name}


def test_generate_equals_plain_transformers(base_url, reference):
    body = {
        "instruction": "请从下面的句子中抽取实体。",
        "input": "浙江大学位于浙江省杭州市。",
        "parameters": {"temperature": 0.0, "max_tokens": 16},  # greedy: /generate's default samples
    }
    t0 = time.perf_counter()
    r = _post(base_url, body)
    print(f"\n/generate 16 tokens: {1000 * (time.perf_counter() - t0):.0f} ms")
    assert r.status_code == 200, r.text
    text, n = reference(body["instruction"], body["input"], max_tokens=16)
    assert r.json() == {"generated_text": text, "num_output_tokens_cf": n, "error": None}


def test_knowlm_style_beams_and_penalty_equal_plain_transformers(base_url, reference):
    params = {"temperature": 0.2, "do_sample": False, "num_beams": 2, "repetition_penalty": 1.3, "max_tokens": 8}
    r = _post(base_url, {"instruction": "Name the capital of France.", "parameters": params})
    assert r.status_code == 200, r.text
    text, n = reference("Name the capital of France.", num_beams=2, repetition_penalty=1.3, max_tokens=8)
    assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == (text, n)


def test_concurrent_requests_all_succeed_and_match(base_url, reference):
    bodies = [
        {
            "instruction": f"Question {i}: what is a knowledge graph?" + " Explain." * i,
            "parameters": {"temperature": 0.0, "max_tokens": 4 + i},
        }
        for i in range(8)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: _post(base_url, b), bodies))
    print(f"\n8 concurrent requests: {1000 * (time.perf_counter() - t0):.0f} ms wall")
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        text, n = reference(body["instruction"], max_tokens=body["parameters"]["max_tokens"])
        assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == (text, n)


def test_bad_json_is_a_400_with_the_error_shape(base_url):
    r = requests.post(
        f"{base_url}/generate", data="{not json", timeout=10, headers={"content-type": "application/json", **AUTH}
    )
    _assert_error(r, (400, 400), "JSON")
    _assert_error(_post(base_url, ["a list"]))


@pytest.mark.parametrize(
    "body, field",
    [
        ({"input": "x"}, "instruction"),
        ({"instruction": ""}, "instruction"),
        ({"instruction": 42}, "instruction"),
        ({"instruction": "x", "parameters": {"temperature": 3.0}}, "parameters.temperature"),
        ({"instruction": "x", "parameters": {"max_tokens": "many"}}, "parameters.max_tokens"),
        ({"instruction": "x", "parameters": {"num_beams": 20}}, "parameters.num_beams"),
        ({"instruction": "x", "stream": True}, "stream"),
        ({"instruction": "x", "parameters": {"top_k": -2}}, "parameters.top_k"),
        ({"instruction": "x", "parameters": {"frequency_penalty": 2.5}}, "parameters.frequency_penalty"),
        ({"instruction": "x", "model": 3}, "model"),
    ],
)
def test_invalid_requests_name_the_field(base_url, body, field):
    _assert_error(_post(base_url, body), mentions=field)


# KnowLM's own server (inference/launch_vllm.py): the body its clients send, and its probe.
KNOWLM_BODY = {
    "instruction": "你好",
    "input": "",
    "parameters": {
        "top_p": 0.7,
        "max_tokens": 16,
        "top_k": -1,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "temperature": 0.9,
    },
}


def test_knowlm_clients_body_is_answered_and_is_ready_is_200(base_url):
    r = requests.get(f"{base_url}/is_ready", timeout=10)  # a probe: no API key, like /healthz
    assert r.status_code == 200 and r.json() is True
    r = _post(base_url, KNOWLM_BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"generated_text", "num_output_tokens_cf", "error"} and body["error"] is None
    assert isinstance(body["generated_text"], str) and 1 <= body["num_output_tokens_cf"] <= 16


def test_generate_takes_knowlms_defaults_for_absent_keys(base_url, reference):
    answers = []
    for body in ({"instruction": "介绍一下浙江大学"}, {"instruction": "介绍一下浙江大学", "parameters": {}}) * 2:
        r = _post(base_url, body)
        assert r.status_code == 200, r.text
        assert 1 <= r.json()["num_output_tokens_cf"] <= 16  # max_tokens 16
        answers.append(r.json()["generated_text"])
    # temperature 1.0: sampled, not greedy (four 16-token samples from 3,000 tokens never all agree)
    greedy = reference("介绍一下浙江大学", max_tokens=16)[0]
    assert len(set(answers)) > 1 and set(answers) != {greedy}


def test_unknown_parameters_are_ignored_on_generate_but_refused_on_v1(base_url, reference):
    extra = {"use_beam_search": True, "best_of": 2, "stop": ["x"], "n": 3, "ignore_eos": False}
    r = _post(base_url, {"instruction": "x", "parameters": {"temperature": 0, "max_tokens": 6, **extra}})
    assert r.status_code == 200, r.text
    assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == reference("x", max_tokens=6)
    _assert_error(_post(base_url, {"prompt": "x", "use_beam_search": True}, "/v1/completions"), (422, 422))
    msgs = [{"role": "user", "content": "x"}]
    _assert_error(_post(base_url, {"messages": msgs, "ignore_eos": False}, "/v1/chat/completions"), (422, 422))


def test_frequency_penalty_stops_greedy_repeats_over_http(base_url, reference):
    def tokens(body):
        r = _post(base_url, {"prompt": "浙江大学位于", "max_tokens": 40, "temperature": 0, **body}, "/v1/completions")
        assert r.status_code == 200, r.text
        ids = reference.tok(r.json()["choices"][0]["text"], add_special_tokens=False)["input_ids"]
        return max(ids.count(t) for t in set(ids))

    free = tokens({})
    assert free >= 3  # greedy on the tiny model loops on a token
    assert tokens({"frequency_penalty": 2.0}) < free
    assert tokens({"presence_penalty": 2.0, "top_k": -1}) < free


def test_prompt_beyond_context_is_a_400_with_code_context_length_exceeded(base_url, client):
    import openai

    over = dict(status_range=(400, 400), code="context_length_exceeded")
    _assert_error(_post(base_url, {"instruction": "知识 " * 2000}), mentions="context", **over)
    _assert_error(
        _post(base_url, {"instruction": "x", "parameters": {"max_tokens": 100_000}}), mentions="max_tokens", **over
    )
    _assert_error(
        _post(base_url, {"prompt": "知识 " * 2000, "max_tokens": 4}, "/v1/completions"), mentions="context", **over
    )
    _assert_error(
        _post(base_url, {"messages": [{"role": "user", "content": "知识 " * 2000}]}, "/v1/chat/completions"),
        mentions="context",
        **over,
    )
    with pytest.raises(openai.BadRequestError) as info:  # a stock client reads it as OpenAI's
        client.completions.create(model=reference_model(client), prompt="x", max_tokens=100_000)
    assert info.value.code == "context_length_exceeded"


def test_unknown_route_keeps_the_error_shape(base_url):
    _assert_error(requests.get(f"{base_url}/nope", timeout=10, headers=AUTH), (404, 404))


# ------------------------------------------------------------------------------------ OpenAI API
def test_models_lists_base_and_adapters(client, tiny_model):
    assert [m.id for m in client.models.list().data] == [tiny_model.name, "ie", "other"]


def reference_model(client) -> str:
    return client.models.list().data[0].id


def test_openai_completions_equal_plain_transformers(client, reference):
    out = client.completions.create(
        model=reference_model(client), prompt="浙江大学位于", max_tokens=12, temperature=0, n=2
    )
    text, n = reference.raw("浙江大学位于", max_tokens=12)
    assert [c.text for c in out.choices] == [text, text] and [c.index for c in out.choices] == [0, 1]
    assert out.usage.completion_tokens == 2 * n
    assert out.usage.prompt_tokens == len(reference.tok("浙江大学位于")["input_ids"])
    assert out.object == "text_completion" and out.choices[0].finish_reason in ("stop", "length")


def test_openai_chat_equals_generate(client, base_url):
    chat = client.chat.completions.create(
        model=reference_model(client),
        max_tokens=16,
        temperature=0,
        messages=[{"role": "user", "content": "介绍一下浙江大学"}],
    )
    gen = _post(
        base_url, {"instruction": "介绍一下浙江大学", "parameters": {"temperature": 0, "max_tokens": 16}}
    ).json()
    assert chat.choices[0].message.content == gen["generated_text"]
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == gen["num_output_tokens_cf"]


def test_streamed_text_equals_non_streamed(client):
    model = reference_model(client)
    full = client.completions.create(model=model, prompt="The capital of France is", max_tokens=20, temperature=0)
    chunks = list(
        client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=20, temperature=0, stream=True
        )
    )
    assert len(chunks) > 3 and "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason

    msgs = [
        {"role": "system", "content": "你是知识抽取助手。"},
        {"role": "user", "content": "抽取实体：浙江大学位于杭州。"},
    ]
    full = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=model,
        messages=msgs,
        max_tokens=20,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage = {0: "", 1: ""}, None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {0: full.choices[0].message.content, 1: full.choices[0].message.content}
    assert usage.completion_tokens == 2 * full.usage.completion_tokens


def test_sse_wire_format(base_url):
    r = _post(
        base_url,
        {"prompt": "浙江大学", "max_tokens": 4, "temperature": 0, "stream": True},
        "/v1/completions",
        stream=True,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_strings_cut_the_text(client):
    model = reference_model(client)
    full = client.completions.create(model=model, prompt="浙江大学位于", max_tokens=24, temperature=0).choices[0]
    stop = full.text[5:7]
    cut = full.text[: full.text.find(stop)]
    out = client.completions.create(
        model=model, prompt="浙江大学位于", max_tokens=24, temperature=0, stop=[stop, "never-appears"]
    ).choices[0]
    assert (out.text, out.finish_reason) == (cut, "stop")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="浙江大学位于", max_tokens=24, temperature=0, stop=stop, stream=True
        )
    )
    assert streamed == cut


def test_sampling_parameters_are_accepted(client):
    out = client.completions.create(
        model=reference_model(client), prompt="浙江", max_tokens=6, temperature=0.9, top_p=0.8, n=3
    )
    assert len(out.choices) == 3 and all(c.finish_reason in ("stop", "length") for c in out.choices)


@pytest.mark.parametrize(
    "route, body, status, mentions",
    [
        ("/v1/chat/completions", {"messages": []}, 422, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            400,
            "last message",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "logprobs": True}, 400, "logprobs"),
        ("/v1/completions", {"prompt": "x", "temperature": 3}, 422, "temperature"),
        ("/v1/completions", {"prompt": "x", "n": 0}, 422, "n"),
        ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
        ("/v1/completions", {"prompt": "x", "tools": []}, 422, "tools"),
        ("/v1/completions", {"max_tokens": 3}, 422, "prompt"),
    ],
)
def test_malformed_openai_requests(base_url, route, body, status, mentions):
    _assert_error(_post(base_url, body, route), (status, status), mentions)


# ------------------------------------------------------------------------------------ adapters
def test_adapter_chosen_per_request_equals_peft(client, base_url, tiny_model, lora_dirs, reference, reference_cls):
    from knowlm_ray.alpaca import build_prompt

    body = {
        "instruction": "请抽取实体。",
        "input": "浙江大学位于杭州。",
        "parameters": {"temperature": 0, "max_tokens": 12},
    }
    base = _post(base_url, body).json()
    want = {
        name: reference_cls(tiny_model, lora_dirs[name]).raw(build_prompt(body["instruction"], body["input"]), 12)
        for name in ("ie", "other")
    }
    # interleaved and concurrent: grouped per adapter in a batch, one adapter held at a time (LRU 1)
    asks = [("ie", "model"), (None, None), ("other", "adapter"), ("ie", "adapter"), ("other", "model")] * 2
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda a: _post(base_url, {**body, a[1]: a[0]} if a[0] else body), asks))
    for (name, _), r in zip(asks, answers):
        assert r.status_code == 200, r.text
        got = (r.json()["generated_text"], r.json()["num_output_tokens_cf"])
        assert got == (want[name] if name else (base["generated_text"], base["num_output_tokens_cf"]))
    assert want["ie"] != want["other"] and want["ie"][0] != base["generated_text"]
    assert (base["generated_text"], base["num_output_tokens_cf"]) == reference(body["instruction"], body["input"], 12)
    chat = client.chat.completions.create(
        model=f"{tiny_model.name}:ie",
        max_tokens=12,
        temperature=0,
        messages=[{"role": "user", "content": "请抽取实体。"}],
    )
    assert chat.model == f"{tiny_model.name}:ie"
    assert (
        chat.choices[0].message.content
        == reference_cls(tiny_model, lora_dirs["ie"]).raw(build_prompt("请抽取实体。"), 12)[0]
    )


def test_unknown_models_are_404_and_never_paths(client, base_url):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    for model in ("nope", "/etc", "../ie"):
        _assert_error(_post(base_url, {"instruction": "x", "model": model}), (404, 404), "not found")
    _assert_error(_post(base_url, {"instruction": "x", "adapter": "nope"}), (404, 404), "nope")
    _assert_error(_post(base_url, {"instruction": "x", "adapter": "ie", "model": "other"}), (400, 400), "disagree")


# ------------------------------------------------------------------------------------ safety
def test_api_key_is_required_except_for_healthz(base_url):
    r = requests.post(f"{base_url}/generate", json={"instruction": "x"}, timeout=10)
    _assert_error(r, (401, 401), "missing API key", type="authentication_error")
    assert r.headers["www-authenticate"] == "Bearer"
    r = requests.get(f"{base_url}/v1/models", timeout=10, headers={"Authorization": "Bearer wrong"})
    _assert_error(r, (401, 401), "invalid API key", type="authentication_error")
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200


def test_request_timeout_is_a_504_and_stops_the_work(base_url):
    t0 = time.perf_counter()
    r = _post(
        base_url,
        {"instruction": "x", "parameters": {"temperature": 0, "max_tokens": 900}},
        headers={"X-KnowLM-Timeout-S": "0.3"},
    )
    _assert_error(r, (504, 504), "timed out", type="timeout_error")
    assert time.perf_counter() - t0 < 10
    # greedy: OpenAI's default temperature 1.0 samples, and a sampled EOS first ends the stream early
    r = _post(
        base_url,
        {"prompt": "浙江大学", "max_tokens": 900, "temperature": 0, "stream": True},
        "/v1/completions",
        headers={"X-KnowLM-Timeout-S": "0.3"},
    )
    assert r.status_code == 200 and '"timeout_error"' in r.text and r.text.endswith("data: [DONE]\n\n")
    _assert_error(_post(base_url, {"instruction": "x"}, headers={"X-KnowLM-Timeout-S": "soon"}), (400, 400))


def test_client_disconnect_cancels_a_stream(base_url, handle):
    before = handle.get_stats.remote().result()["runner"]["cancelled"]
    r = _post(
        base_url,
        {"prompt": "浙江大学", "max_tokens": 900, "temperature": 0, "stream": True},
        "/v1/completions",
        stream=True,
    )
    lines = r.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    r.close()  # hang up mid-stream
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = handle.get_stats.remote().result()
        if stats["runner"]["cancelled"] > before:
            break
        time.sleep(0.2)
    assert stats["runner"]["cancelled"] == before + 1 and stats["metrics"]["cancelled"] >= 1
    assert stats["waiting"] == 0
    _stats_until(handle, lambda s: s["batcher"]["active_rows"] == 0)  # its row left the batch


def _stats_until(handle, cond, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while not cond(stats := handle.get_stats.remote().result()):
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    return stats


def _send_and_keep(base_url, route, body) -> socket.socket:
    """A raw HTTP request whose connection the test hangs up when it likes."""
    host, port = base_url.split("//")[1].rsplit(":", 1)
    data = json.dumps(body).encode()
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode() + data)
    return sock


def test_client_disconnect_stops_a_non_streaming_request(base_url, handle):
    before = handle.get_stats.remote().result()
    sock = _send_and_keep(
        base_url, "/v1/completions", {"prompt": "浙江大学", "n": 4, "max_tokens": 900, "temperature": 0}
    )
    _stats_until(handle, lambda s: s["batcher"]["active_rows"] == 4)  # its 4 rows decode (900 tokens: ~20 s)
    sock.close()  # hang up while waiting for the answer
    stats = _stats_until(handle, lambda s: s["batcher"]["active_rows"] == 0)
    assert stats["batcher"]["cancelled_rows"] == before["batcher"]["cancelled_rows"] + 4
    assert stats["runner"]["cancelled"] == before["runner"]["cancelled"] + 1 and stats["waiting"] == 0


def test_streams_count_in_the_waiting_line_and_get_503(base_url, handle):
    """Streams of 8 rows each against a batch of 8: all but one keep rows waiting, so past
    max_waiting_requests (8) the next stream is refused before it starts; hanging up the
    admitted ones stops them all."""
    before = handle.get_stats.remote().result()
    body = {
        "messages": [{"role": "user", "content": "浙江大学"}],
        "n": 8,
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }

    def open_stream(_):
        return _post(base_url, body, "/v1/chat/completions", stream=True, timeout=30)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(open_stream, range(12)))
    codes = [r.status_code for r in answers]
    try:
        assert set(codes) == {200, 503} and codes.count(200) <= 9, codes
        for r in answers:
            if r.status_code == 503:
                _assert_error(r, (503, 503), "overloaded", type="overloaded_error")
    finally:
        for r in answers:
            r.close()
    stats = _stats_until(handle, lambda s: s["batcher"]["active_rows"] == 0 and s["waiting"] == 0)
    assert stats["runner"]["cancelled"] == before["runner"]["cancelled"] + codes.count(200)
    assert stats["batcher"]["waiting_rows"] == 0


def test_overload_burst_gets_only_200s_and_503s(base_url):
    body = {"instruction": "写一段关于知识图谱的介绍。", "parameters": {"temperature": 0, "max_tokens": 48}}

    def call(_):
        try:
            return _post(base_url, body, timeout=30)
        except requests.RequestException as exc:  # a hang would end here
            return exc

    t0 = time.perf_counter()
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(call, range(48)))
    wall = time.perf_counter() - t0
    codes = [getattr(r, "status_code", r) for r in answers]
    ours = sum(
        1
        for r in answers
        if getattr(r, "status_code", 0) == 503 and r.headers.get("content-type", "").startswith("application/json")
    )
    print(
        f"\noverload burst of 48: {codes.count(200)} x 200, {codes.count(503)} x 503 "
        f"({ours} from the replica's queue bound, the rest Serve's), {wall:.1f}s"
    )
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 8 and codes.count(503) >= 1
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            if r.headers.get("content-type", "").startswith("application/json"):  # ours (Serve's is text)
                _assert_error(r, (503, 503), "overloaded", type="overloaded_error")


def test_generate_texts_seam_for_extract(handle, reference):
    texts = handle.generate_texts.remote(
        [("请抽取实体。", "浙江大学位于杭州。"), ("Name the capital of France.", "")], {"max_tokens": 10}
    ).result()
    assert texts == [
        reference("请抽取实体。", "浙江大学位于杭州。", max_tokens=10)[0],
        reference("Name the capital of France.", max_tokens=10)[0],
    ]


def test_metrics_count_routes_statuses_tokens_and_queue(handle, tiny_model):
    m = handle.get_stats.remote().result()["metrics"]
    assert m["requests"]["/generate 200"] >= 10 and m["requests"]["/v1/completions 200"] >= 3
    assert m["requests"]["/generate 401"] >= 1 and m["requests"]["/generate 422"] >= 5
    assert sum(v for k, v in m["requests"].items() if k.endswith(" 503")) == m["rejected"].get("overload", 0)
    assert m["rejected"]["timeout"] >= 2 and m["latency_ms"]["/generate"]["count"] >= 10
    assert m["generated_tokens"]["/generate ie"] > 0 and m["generated_tokens"]["/v1/chat/completions ie"] > 0
    assert m["prompt_tokens"][f"/extract {tiny_model.name}"] > 0  # generate_texts
    assert m["queue_length"] == 0


def test_start_refuses_another_address_while_serve_runs(base_url, tiny_model):
    from knowlm_ray.serve import launch

    with pytest.raises(launch.ServeStartError, match="already runs"):
        launch.start(str(tiny_model), port=_free_port(), num_replicas=1)
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200


def test_extract_equals_local_plan_generate_assemble(base_url, reference):
    """/extract = the IE library's plan -> greedy generate per prompt -> parse/assemble, over HTTP."""
    from knowlm_ray.ie.extract import assemble, plan_extraction

    text = "启航科技总部位于青岚市，创始人是李明。"
    body = {
        "task": "ner",
        "text": text,
        "schema": ["人物", "组织机构", "地理位置"],
        "lang": "zh",
        "parameters": {"max_tokens": 12},
        "constrained": False,  # free decoding, as the reference generates (constrained: tested below)
    }
    r = _post(base_url, body, route="/extract", timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    plan = plan_extraction("ner", text, body["schema"], "zh", fmt="json")
    want = assemble(plan, [reference(i, x, max_tokens=12)[0] for i, x in plan.pairs])
    assert got == json.loads(json.dumps(want, ensure_ascii=False))
    assert {"id", "text", "entities", "relations", "events", "raw"} <= set(got)


def test_extract_oneke_sends_the_oneke_prompt_verbatim(base_url, reference):
    """``prompt_format: oneke``: the model reads OneKE's own prompt (Llama-2 wrapper around the
    IEPile JSON instruction), built here by hand, and /extract answers 200 with a record."""
    from knowlm_ray.ie.extract import assemble, plan_extraction

    text = "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"
    schema = ["组织机构", "人物", "地理位置"]
    body = {"task": "ner", "text": text, "schema": schema, "lang": "zh", "prompt_format": "oneke", "constrained": False}
    r = _post(base_url, {**body, "parameters": {"max_tokens": 12}}, route="/extract", timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    prompt = (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
        '{"instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。'
        '请按照JSON字符串的格式回答。", "schema": ["组织机构", "人物", "地理位置"], '
        '"input": "相比之下，青岛海牛队和广州松日队的雨中之战虽然也是0∶0，但乏善可陈。"}[/INST]'
    )
    plan = plan_extraction("ner", text, schema, "zh", prompt_format="oneke")
    assert plan.texts == [prompt]
    want = assemble(plan, [reference.raw(prompt, max_tokens=12)[0]])
    assert got == json.loads(json.dumps(want, ensure_ascii=False))
    assert got["raw"] == want["raw"] and set(got) >= {"id", "text", "entities", "raw"}


def test_extract_asks_each_adapter_in_its_own_prompt_format(base_url, tiny_model, lora_dirs, reference_cls):
    """``loras: {other: {path, prompt_format: oneke}}``: /extract on "other" sends OneKE's prompt
    (built here by hand); on "ie" (a plain directory) the model's own format, alpaca; a request's
    prompt_format overrides the adapter's. Each answer equals peft's greedy answer to that prompt."""
    from knowlm_ray.alpaca import build_prompt

    text, schema = "鲁迅生于绍兴。", ["人物", "地点"]
    body = {"task": "ner", "text": text, "schema": schema, "lang": "zh", "constrained": False}
    body["parameters"] = {"max_tokens": 8}
    oneke = (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
        '{"instruction": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。'
        '请按照JSON字符串的格式回答。", "schema": ["人物", "地点"], "input": "鲁迅生于绍兴。"}[/INST]'
    )
    alpaca = build_prompt(
        '请从输入文本中抽取实体，候选的实体类型为["人物", "地点"]。请以JSON字符串回答，格式为{"实体类型": ["实体"]}；'
        "如果没有符合的实体，请回答“无”。",
        text,
    )
    other, ie = (reference_cls(tiny_model, lora_dirs[name]) for name in ("other", "ie"))
    want = {
        ("other", None): other.raw(oneke, 8)[0],
        ("other", "alpaca"): other.raw(alpaca, 8)[0],
        ("ie", None): ie.raw(alpaca, 8)[0],
    }
    assert want["other", None] != want["other", "alpaca"]  # the two prompts are told apart by the answers
    for (model, fmt), answer in want.items():
        r = _post(base_url, {**body, "model": model, **({"prompt_format": fmt} if fmt else {})}, route="/extract")
        assert r.status_code == 200, r.text
        assert r.json()["raw"] == [answer], (model, fmt)


@pytest.mark.parametrize(
    "body, status, mentions",
    [
        ({"task": "ner", "text": "李明。", "schema": ["人物"], "prompt_format": "llama9"}, 400, "prompt_format"),
        ({"task": "xx", "text": "a", "schema": ["人物"]}, 400, "task"),
        ({"task": "ner", "text": "   ", "schema": ["人物"]}, 400, "text"),
        ({"task": "ner", "text": "李明在青岚市。"}, 400, "schema"),
        ({"task": "ner", "text": "李明。", "schema": ["人物"], "colour": 1}, 400, "colour"),
        ({"task": "ner", "text": "李明。", "schema": ["人物"], "parameters": {"temperature": 9}}, 400, "temperature"),
        ({"task": "ner", "text": "李明。", "schema": ["人物"], "model": "nope"}, 404, "nope"),
    ],
)
def test_extract_rejects_bad_requests_naming_the_field(base_url, body, status, mentions):
    r = _post(base_url, body, route="/extract")
    assert r.status_code == status, r.text
    assert mentions in r.json()["error"]["message"]


def test_extract_bad_json_is_a_400(base_url):
    r = requests.post(
        f"{base_url}/extract", data="{oops", timeout=30, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_dynamic_batching_app_answers_the_same(base_url, tiny_model, reference):
    """``batching: dynamic`` (@serve.batch over grouped generate), beside the continuous default."""
    from ray import serve

    from knowlm_ray.serve.app import build_app

    assert serve.get_app_handle("knowlm").get_stats.remote().result()["batching"] == "continuous"
    serve.run(
        build_app({"model": str(tiny_model), "batching": "dynamic", "num_replicas": 1, "api_key": API_KEY, **LIMITS}),
        name="dynamic",
        route_prefix="/dynamic",
        blocking=False,
    )
    try:
        url = f"{base_url}/dynamic"
        from knowlm_ray.serve.launch import wait_ready

        wait_ready(url, timeout_s=120)
        bodies = [
            {"instruction": f"Question {i}: 浙江大学", "parameters": {"temperature": 0, "max_tokens": 3 + 2 * i}}
            for i in range(4)
        ]
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda b: _post(url, b), bodies))
        for body, r in zip(bodies, responses):
            assert r.status_code == 200, r.text
            assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == reference(
                body["instruction"], max_tokens=body["parameters"]["max_tokens"]
            )
        assert serve.get_app_handle("dynamic").get_stats.remote().result()["batching"] == "dynamic"
    finally:
        serve.delete("dynamic")


# ------------------------------------------------------------------------ constrained decoding
def test_structured_outputs_and_constrained_extract_over_http(base_url, client):
    """response_format json_schema / json_object on both OpenAI routes, and /extract constrained
    by default (span mode keeps mentions in the text): the tiny model's random weights still
    answer valid JSON of the asked shape, within max_tokens."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "tags"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    short = _post(base_url, {"prompt": "x", "max_tokens": 14, "response_format": fmt}, "/v1/completions")
    _assert_error(short, mentions="shortest answer")  # {"name": "", "tags": []} is 15 tokens here
    for max_tokens in (15, 16, 40):
        r = client.completions.create(
            model=reference_model(client),
            prompt="Describe:",
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"response_format": fmt},
        )
        jsonschema.validate(json.loads(r.choices[0].text), schema)
        assert r.usage.completion_tokens <= max_tokens
    chat = client.chat.completions.create(
        model=reference_model(client),
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=30,
        temperature=1.0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(chat.choices[0].message.content), dict)
    bad = _post(
        base_url,
        {
            "prompt": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "string", "pattern": "a"}},
            },
        },
        "/v1/completions",
    )
    _assert_error(bad, mentions="pattern")
    text = "鲁迅，原名周树人，1881年出生于浙江绍兴。"
    r = _post(
        base_url,
        {"task": "ner", "text": text, "schema": ["人物", "地点"], "prompt_format": "oneke", "mentions": "span"},
        "/extract",
    )
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["raw"][0])
    assert list(answer) == ["人物", "地点"]
    assert all(m in text for v in answer.values() for m in v)
