"""Request bounds over real HTTP through Serve's proxy, with the inputs that broke the server
before: a body nested 5,000 deep, an 18 MB body, a 180 KB /extract text with 60 labels, 32
prompts x n=8, a too-long stop string, and a forced internal error (an adapter whose files
cannot load) that must answer 500 with a request id and without the exception's text."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

pytestmark = pytest.mark.slow

MAX_ROWS = 200  # below 32 x 8, above one /extract of 12,000 characters with 24 labels
DEFAULT_BODY = 1 << 20  # AppArgs' max_body_bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tiny_model, tmp_path_factory):
    from ray import serve

    from knowlm_ray.serve import launch

    broken = tmp_path_factory.mktemp("broken_adapter")
    (broken / "adapter_config.json").write_text("{}")  # no peft_type: loading it fails inside generation
    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    port = _free_port()
    url = launch.start(
        str(tiny_model),
        loras={"broken": str(broken)},
        port=port,
        num_replicas=1,
        timeout_s=120,
        max_rows_per_request=MAX_ROWS,
        max_batch_size=8,
    )
    yield url, port
    launch.stop()


@pytest.fixture(scope="module")
def base_url(server):
    return server[0]


def _error(r, status: int, mentions: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    if mentions:
        assert mentions in body["error"]["message"], body
    rid = r.headers["x-request-id"]
    assert rid and "," not in rid  # one id, not one per layer
    return body["error"]


def _raw_response(sock: socket.socket, timeout_s: float = 30) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response read from ``sock``."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def test_a_body_nested_5000_deep_is_a_400_naming_the_limit(base_url):
    body = '{"task": "ner", "text": "x", "schema": ' + "[" * 5000 + "]" * 5000 + "}"
    r = requests.post(f"{base_url}/extract", data=body, headers={"content-type": "application/json"}, timeout=60)
    _error(r, 400, "max_json_depth=64")


def test_an_18_mb_body_is_a_413_before_it_is_read(server):
    """Content-Length says 18 MB; only 64 KB are sent, and the 413 comes anyway."""
    _, port = server
    size = 18_000_000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        t0 = time.perf_counter()
        sock.sendall(head.encode() + b'{"instruction": "' + b"x" * 65536)
        status, headers, raw = _raw_response(sock)
    assert status == 413, raw
    assert f"max_body_bytes={DEFAULT_BODY}" in json.loads(raw)["error"]["message"]
    assert headers.get("x-request-id")
    print(f"\n413 for an announced 18 MB body after {1000 * (time.perf_counter() - t0):.0f} ms")


def test_a_chunked_body_past_the_limit_is_a_413_counted_as_it_arrives(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        sent = 0
        try:
            while sent <= 2 * DEFAULT_BODY:  # at most twice the limit; the server may cut us off
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except OSError:
            pass
        status, _, raw = _raw_response(sock)
    assert status == 413, raw
    assert f"max_body_bytes={DEFAULT_BODY}" in json.loads(raw)["error"]["message"]


def test_a_180_kb_extract_text_with_60_labels_is_refused_naming_the_limit(base_url):
    text = "浙江大学位于浙江省杭州市，创建于1897年。" * 3200  # 185 KB of UTF-8
    assert len(text.encode()) >= 180_000
    body = {"task": "ner", "text": text, "schema": [f"类型{i}" for i in range(60)], "lang": "zh"}
    _error(requests.post(f"{base_url}/extract", json=body, timeout=60), 400, "max_extract_chars=20000")


def test_extract_rows_past_the_cap_are_refused_before_generation(base_url):
    text = "浙江大学位于浙江省杭州市，创建于1897年。" * 900  # 19,800 characters: within max_extract_chars
    body = {"task": "re", "text": text, "schema": [f"关系{i}" for i in range(40)], "lang": "zh"}
    t0 = time.perf_counter()
    _error(requests.post(f"{base_url}/extract", json=body, timeout=60), 400, f"max_rows_per_request={MAX_ROWS}")
    assert time.perf_counter() - t0 < 20  # refused, not generated


def test_32_prompts_times_n_8_past_the_cap_is_a_400(base_url):
    body = {"model": None, "prompt": ["浙江大学"] * 32, "n": 8, "max_tokens": 4}
    _error(requests.post(f"{base_url}/v1/completions", json=body, timeout=60), 400, f"max_rows_per_request={MAX_ROWS}")
    body["n"] = 2  # 64 rows: within the cap
    r = requests.post(f"{base_url}/v1/completions", json={**body, "temperature": 0}, timeout=120)
    assert r.status_code == 200 and len(r.json()["choices"]) == 64, r.text


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_too_long_or_too_many_stop_strings_are_a_400(base_url, route):
    body = (
        {"prompt": "浙江大学", "max_tokens": 4}
        if route == "/v1/completions"
        else {"messages": [{"role": "user", "content": "浙江大学"}], "max_tokens": 4}
    )
    r = requests.post(f"{base_url}{route}", json={**body, "stop": ["x" * 257]}, timeout=60)
    _error(r, 400, "max_stop_chars=256")
    r = requests.post(f"{base_url}{route}", json={**body, "stop": ["a", "b", "c", "d", "e"]}, timeout=60)
    _error(r, 400, "max_stop_strings=4")


def test_a_forced_internal_error_is_a_500_with_a_request_id_and_no_exception_text(base_url, tmp_path):
    body = {"instruction": "x", "adapter": "broken", "parameters": {"temperature": 0, "max_tokens": 2}}
    r = requests.post(f"{base_url}/generate", json=body, timeout=60)
    err = _error(r, 500)
    rid = r.headers["x-request-id"]
    assert err["type"] == "server_error" and rid in err["message"]
    assert err["message"] == f"internal server error; request id {rid} (the server's log has the details)"
    # the server keeps serving
    ok = requests.post(f"{base_url}/generate", json={**body, "adapter": None}, timeout=60)
    assert ok.status_code == 200 and ok.headers["x-request-id"] not in (None, rid)


def test_a_prompt_no_context_could_hold_is_refused_without_tokenising_it(base_url):
    """900 KB of instruction (seconds to tokenise) within max_body_bytes: refused at once."""
    body = {"instruction": "浙江大学位于杭州。" * 33_000, "parameters": {"max_tokens": 4}}
    t0 = time.perf_counter()
    data = json.dumps(body, ensure_ascii=False).encode()  # 900 KB as UTF-8 (\u escapes would double it)
    assert 800_000 < len(data) < 1 << 20
    r = requests.post(f"{base_url}/generate", data=data, headers={"content-type": "application/json"}, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert "characters" in r.json()["error"]["message"]
    print(f"\n900 KB prompt refused in {1000 * elapsed:.0f} ms")
