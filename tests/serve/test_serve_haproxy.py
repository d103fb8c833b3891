"""`knowlm serve --ingress haproxy`, started as a user starts it: a CLI process with its own Ray,
Serve's HAProxy ingress in front of one replica. The same answers, streaming, errors and
overload behaviour as behind Ray's Python proxy, and nothing left running after SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _haproxies(ray_pid: int) -> list:
    """HAProxy processes under this server's process tree (Serve's manager actor starts them;
    each config reload starts a new one and ends the old, so any may be gone a moment later)."""
    import psutil

    found = []
    for p in psutil.Process(ray_pid).children(recursive=True):
        try:
            if p.name() == "haproxy":
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _haproxy_ports(ray_pid: int) -> set[int]:
    import psutil

    ports = set()
    for p in _haproxies(ray_pid):
        try:
            ports |= {c.laddr.port for c in p.net_connections("tcp") if c.status == "LISTEN"}
        except psutil.NoSuchProcess:  # replaced by a reload meanwhile
            pass
    return ports


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    port = _free_port()
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=str(REPO),
        # HAProxy's stats and metrics listeners have fixed default ports: free ones here
        RAY_SERVE_HAPROXY_STATS_PORT=str(_free_port()),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(_free_port()),
    )
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path_factory.mktemp("haproxy") / "serve.log"
    log = open(log_path, "w")
    limits = [
        "num_replicas=1",
        "max_batch_size=4",
        "max_waiting_requests=4",
        "max_ongoing_requests=8",
        "max_queued_requests=4",
        "retry_after_s=1",
    ]
    cmd = [str(BIN / "knowlm"), "serve", "--model", str(tiny_model), "--port", str(port), "--ingress", "haproxy"]
    proc = subprocess.Popen(
        cmd + [a for kv in limits for a in ("--set", kv)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("knowlm serve --ingress haproxy never became healthy:\n" + log_path.read_text()[-3000:])
    yield base, proc
    haproxies = _haproxies(proc.pid)
    proc.send_signal(signal.SIGTERM)  # to the CLI alone: it shuts down Serve and the Ray it started
    try:
        code = proc.wait(timeout=25)  # ~7 s; Ray's 30 s replica draining period would overrun it
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("knowlm serve --ingress haproxy took over 25 s to stop after SIGTERM")
    finally:
        log.close()
    assert code == 0, log_path.read_text()[-3000:]
    for p in haproxies:  # Ray's shutdown must take HAProxy with it
        try:
            p.wait(timeout=30)
        except Exception:
            pytest.fail(f"HAProxy (pid {p.pid}) still runs after the server stopped")


def test_port_is_served_by_haproxy(server):
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    deadline = time.monotonic() + 15
    while port not in (listening := _haproxy_ports(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)  # between a reload's new process and the old one's exit
    assert port in listening, f"HAProxy listens on {sorted(listening)}, not {port}"


def test_generate_equals_plain_transformers_and_errors_are_json(server, reference):
    base, _ = server
    r = requests.post(
        f"{base}/generate",
        timeout=60,
        json={"instruction": "介绍一下浙江大学", "parameters": {"temperature": 0, "max_tokens": 12}},  # greedy
    )
    assert r.status_code == 200, r.text
    assert (r.json()["generated_text"], r.json()["num_output_tokens_cf"]) == reference(
        "介绍一下浙江大学", max_tokens=12
    )
    bad = requests.post(f"{base}/generate", data="{not json", timeout=10, headers={"content-type": "application/json"})
    assert 400 <= bad.status_code < 500 and set(bad.json()["error"]) == {"message", "type"}


def test_streaming_chat_through_haproxy(server, tiny_model):
    from openai import OpenAI

    base, _ = server
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "你好"}]
    whole = client.chat.completions.create(model=tiny_model.name, messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=tiny_model.name, messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text == whole.choices[0].message.content


def test_overload_burst_gets_only_200s_and_503s(server):
    base, _ = server
    body = {"instruction": "写一段关于知识图谱的介绍。", "parameters": {"temperature": 0, "max_tokens": 48}}

    def call(_):
        try:
            return requests.post(f"{base}/generate", json=body, timeout=60)
        except requests.RequestException as exc:  # a hang would end here
            return exc

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(32)))
    codes = [getattr(r, "status_code", r) for r in answers]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 4 and codes.count(503) >= 1, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 503)


def _send_and_keep(base: str, route: str, body: dict) -> socket.socket:
    """A raw HTTP request whose connection the test hangs up when it likes."""
    import json

    host, port = base.split("//")[1].rsplit(":", 1)
    data = json.dumps(body).encode()
    head = f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode() + data)
    return sock


def _peek(socks: list[socket.socket]) -> list[str]:
    """The status line each held connection has received so far ("-": nothing yet); MSG_PEEK
    leaves the bytes where they are, so it always sees the start of the response."""
    seen = []
    for s in socks:
        timeout = s.gettimeout()
        s.settimeout(0)  # a socket with a timeout would wait for data first
        try:
            data = s.recv(200, socket.MSG_PEEK)
            seen.append(data.decode(errors="replace").split("\r\n", 1)[0] or "closed")
        except BlockingIOError:
            seen.append("-")
        finally:
            s.settimeout(timeout)
    return seen


@pytest.mark.parametrize("stream", [False, True])
def test_clients_that_hang_up_behind_haproxy_free_the_line_and_the_batch(server, tiny_model, stream):
    """Four requests of 64 rows x 900 tokens against a batch of 4 keep rows waiting for minutes,
    so they fill the waiting line (4) and a one-row probe gets 503; once their clients hang up,
    HAProxy aborts them at the replica, their rows stop and the probe is served again."""
    base, _ = server
    # 8 prompts x n 8 = 64 rows of 900 tokens each: ~a minute of decoding per request at a step a
    # millisecond, so the line stays full however long the router takes to hand them over
    body = {"model": tiny_model.name, "prompt": ["浙江大学"] * 8, "n": 8, "max_tokens": 900, "temperature": 0}
    probe = {"instruction": "浙江大学", "parameters": {"temperature": 0, "max_tokens": 4}}
    socks = [_send_and_keep(base, "/v1/completions", {**body, "stream": stream}) for _ in range(4)]
    try:
        deadline = time.monotonic() + 120  # a loaded box: the replica may take a while to see all four
        while True:
            for k, seen in enumerate(_peek(socks)):
                if seen != "-" and " 200 " not in seen:  # refused as it arrived (a probe held a place): again
                    socks[k].close()
                    socks[k] = _send_and_keep(base, "/v1/completions", {**body, "stream": stream})
            r = requests.post(f"{base}/generate", json=probe, timeout=60)
            if r.status_code == 503 and r.headers.get("content-type") == "application/json":
                break  # the replica's own refusal: its line is full
            # a 200 (the line is not full yet) or Serve's text/plain 503 (its router still holds
            # requests it has not handed to the replica): ask again
            assert time.monotonic() < deadline, f"the big requests never filled the waiting line: {_peek(socks)}"
            time.sleep(0.2)
        assert r.json()["error"]["type"] == "overloaded_error"
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 20
    while (r := requests.post(f"{base}/generate", json=probe, timeout=60)).status_code != 200:
        assert time.monotonic() < deadline, "the hung-up requests still hold the line"
        time.sleep(0.2)
