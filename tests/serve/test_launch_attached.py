"""`knowlm serve` beside a `ray start --head` on the same machine (the README's cluster workflow):
it attaches to that Ray (runtime.init_ray), serves there, and on SIGTERM removes only its own app,
not the Serve that was running with another app in it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.ray_processes import free_port, start_ray_head, stop_ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

OTHER_APP = """
import sys
import ray
from ray import serve

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Other:
    def __call__(self, request):
        return "other"

ray.init()  # finds the `ray start` of this RAY_TMPDIR by itself
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(Other.bind(), name="other", route_prefix="/other")
"""


def _get(url: str, deadline: float, proc=None, log: Path | None = None) -> requests.Response:
    while True:
        if proc is not None:
            assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"{url} never answered" + (f":\n{log.read_text()[-3000:]}" if log else "")
        try:
            r = requests.get(url, timeout=5)
            if r.status_code == 200:
                return r
        except requests.RequestException:
            pass
        time.sleep(1)


@pytest.mark.slow
def test_knowlm_serve_beside_ray_start_leaves_the_other_app_running(tiny_model, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="krl", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=temp_dir, RAY_AUTH_MODE="token", PYTHONPATH=str(REPO))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    proc = None
    try:
        start_ray_head(BIN, env, num_cpus=2)
        other = subprocess.run(
            [sys.executable, "-c", OTHER_APP, str(port)], env=env, capture_output=True, text=True, timeout=120
        )
        assert other.returncode == 0, other.stderr[-3000:]
        assert requests.get(f"{base}/other", timeout=10).text == "other"

        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [str(BIN / "knowlm"), "serve", "--model", str(tiny_model), "--port", str(port)]
                + ["--set", "num_replicas=1"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert _get(f"{base}/healthz", time.time() + 180, proc, log_path).json()["model"] == tiny_model.name
        assert "[knowlm] attaching to the Ray that `ray start` runs on this machine" in log_path.read_text()
        assert requests.get(f"{base}/other", timeout=10).text == "other"  # one Serve, both apps
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        assert requests.get(f"{base}/other", timeout=10).text == "other"  # still served
        with pytest.raises(requests.RequestException):  # ours is gone: 404 from the Serve that stays
            requests.get(f"{base}/healthz", timeout=10).raise_for_status()
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_ray(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
