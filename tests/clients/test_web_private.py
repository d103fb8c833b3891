"""``knowlm web`` keeps the server's key to itself: on a host other than loopback it refuses to
start without its own login; started with one, nothing an unauthenticated visitor can fetch
contains the key and no request of theirs reaches the server, while a signed-in visitor's
request reaches it with the key added by the page's process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from knowlm_ray.clients.web import AUTH_ENV, SLIDERS, is_loopback, parse_logins, slider_bounds, web_logins
from knowlm_ray.errors import InputError, MissingPathError

KEY = "sk-knowlm-server-key-7f3a9c"
USER, PASSWORD = "alice", "wonder:land"  # a password may hold a colon


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KNOWLM_API_KEY", AUTH_ENV)}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "192.0.2.7"))


def test_logins_from_flag_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert web_logins("127.0.0.1") is None  # loopback: no login needed
    with pytest.raises(InputError, match=r"--host 0\.0\.0\.0: .*needs a login"):
        web_logins("0.0.0.0")
    assert web_logins("0.0.0.0", auth=f"{USER}:{PASSWORD}") == [(USER, PASSWORD)]
    logins = tmp_path / "logins"
    logins.write_text("# who may use the page\nalice:a\n\nbob:b:c\n")
    assert web_logins("0.0.0.0", auth_file=str(logins)) == [("alice", "a"), ("bob", "b:c")]
    with pytest.raises(MissingPathError, match="--auth-file"):
        web_logins("0.0.0.0", auth_file=str(tmp_path / "nope"))
    monkeypatch.setenv(AUTH_ENV, "carol:c")
    assert web_logins("0.0.0.0") == [("carol", "c")]
    for bad in ("alice", "alice:", ":pw", "  "):
        with pytest.raises(InputError, match="USER:PASSWORD"):
            parse_logins(bad, "--auth")


def test_a_public_host_without_a_login_is_refused_in_one_line(monkeypatch, capsys):
    from knowlm_ray.cli import main

    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["web", "--server", "http://127.0.0.1:9", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: knowlm web --host 0.0.0.0"), err
    assert "--auth" in err


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in server that records the path and Authorization header of every request."""

    seen: list = []

    def log_message(self, *args):
        pass

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        self._json({"object": "list", "data": [{"id": "stub"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization")))
        self._json({"generated_text": "an answer", "num_output_tokens_cf": 2})


@pytest.fixture(scope="module")
def public_web(free_port, tmp_path_factory):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = free_port()
    log = open(tmp_path_factory.mktemp("web") / "web.log", "w+")
    cmd = [sys.executable, "-m", "knowlm_ray.cli", "web", "--server", f"http://127.0.0.1:{httpd.server_port}"]
    cmd += ["--host", "0.0.0.0", "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(cmd, env=_env(**{AUTH_ENV: f"{USER}:{PASSWORD}"}), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.seek(0) or log.read()[-3000:]
            try:
                if requests.get(url, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "knowlm web did not answer within 90 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        httpd.shutdown()


def _sliders() -> list[float]:
    return [float(slider_bounds(name)[2]) for name, _, _ in SLIDERS]


def _call(session: requests.Session, url: str, data: list) -> requests.Response:
    return session.post(f"{url}/gradio_api/call/on_submit", json={"data": data}, timeout=30)


@pytest.mark.slow
def test_the_key_stays_with_the_page_process(public_web):
    url, visitor = public_web, requests.Session()
    startup = list(_Recorder.seen)  # the model list, fetched by the page's process at start
    assert startup and all(auth == f"Bearer {KEY}" for _, auth in startup)

    page = visitor.get(url, timeout=30)
    fetched = {"/": page}
    for ref in set(re.findall(r'(?:src|href)="(/[^"]*)"', page.text)):  # the login page's own assets
        fetched[ref] = visitor.get(url + ref, timeout=30)
    for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json", "/gradio_api/queue/status"):
        fetched[path] = visitor.get(url + path, timeout=30)
    assert fetched["/config"].status_code == 401 and fetched["/gradio_api/info"].status_code == 401
    for path, r in fetched.items():
        assert KEY not in r.text, f"{path} sends the server key"
    refused = _call(visitor, url, ["介绍一下浙江大学", "", "stub", *_sliders()])
    assert refused.status_code in (401, 403), refused.text
    assert _Recorder.seen == startup  # nothing of the visitor's reached the server

    member = requests.Session()
    login = member.post(f"{url}/login", data={"username": USER, "password": PASSWORD}, timeout=30)
    assert login.status_code == 200, login.text
    config = member.get(f"{url}/config", timeout=30)
    assert config.status_code == 200 and KEY not in config.text
    call = _call(member, url, ["介绍一下浙江大学", "", "stub", *_sliders()])
    assert call.status_code == 200, call.text
    events = member.get(f"{url}/gradio_api/call/on_submit/{call.json()['event_id']}", timeout=60).text
    assert "an answer" in events and KEY not in events
    assert _Recorder.seen[len(startup) :] == [("/generate", f"Bearer {KEY}")]  # added server-side
