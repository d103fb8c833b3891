"""One real knowlm server (tiny model, API key, one replica) for the client tests, and helpers
to run ``knowlm`` as a subprocess the way a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

API_KEY = "clients-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a local TCP port nobody listens on right now."""
    return _free_port


def _knowlm(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("KNOWLM_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "knowlm_ray.cli", *args],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="session")
def knowlm():
    """``knowlm(*args, stdin=...)``: the CLI in a fresh interpreter, stdin piped (not a terminal)."""
    return _knowlm


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def server(ray_local, tiny_model):
    """Base URL of a Serve app on the session's Ray; Serve is shut down again at the end."""
    from ray import serve

    from knowlm_ray.serve import launch

    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    t0 = time.perf_counter()
    url = launch.start(
        str(tiny_model), port=_free_port(), num_replicas=1, timeout_s=120, api_key=API_KEY, request_timeout_s=60
    )
    print(f"\nServe ready at {url} in {time.perf_counter() - t0:.1f}s")
    yield url
    launch.stop()


@pytest.fixture(scope="session")
def server_post(server):
    """``server_post(route, body)``: the JSON of a 200 answer from the test server."""

    def post(route: str, body: dict) -> dict:
        r = requests.post(f"{server}{route}", headers=AUTH, json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    return post
