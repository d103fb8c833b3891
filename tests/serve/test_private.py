"""A private server by default. `knowlm serve --ingress haproxy`, started as a user starts it (no
RAY_AUTH_MODE, no RAY_ADDRESS): every process it started (the CLI, Ray's GCS, raylet, workers and
agents, Serve's actors, HAProxy with its stats and metrics ports) listens on loopback only, and its
Ray refuses a client that has no token. The same for `serve run serve_configs/tiny.yaml` with the
settings its header puts in front of it. Unit tests of the HAProxy wrapper beside it."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from knowlm_ray.runtime import AUTH_MODE_ENV, LOOPBACK_ENV
from knowlm_ray.serve.ingress import ADMIN_HOST_ENV, BINARY_ENV, wrapper_script

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback
    return (mapped or addr).is_loopback


def _listening(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket in the process tree under pid."""
    import psutil

    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            name = p.name()
            out += [(name, c.laddr.ip, c.laddr.port) for c in p.net_connections("inet") if c.status == "LISTEN"]
        except psutil.NoSuchProcess:  # a worker or an HAProxy replaced by a reload meanwhile
            pass
    return out


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    port, stats, metrics = _free_port(), _free_port(), _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        RAY_SERVE_HAPROXY_STATS_PORT=str(stats),  # fixed default ports: free ones here
        RAY_SERVE_HAPROXY_METRICS_PORT=str(metrics),
    )
    # what a user's shell has: none of the settings this session's own Ray put in os.environ
    for key in ("RAY_ADDRESS", AUTH_MODE_ENV, LOOPBACK_ENV, ADMIN_HOST_ENV, BINARY_ENV):
        env.pop(key, None)
    log_path = tmp_path_factory.mktemp("private") / "serve.log"
    log = open(log_path, "w")
    cmd = [str(BIN / "knowlm"), "serve", "--model", str(tiny_model), "--port", str(port), "--ingress", "haproxy"]
    proc = subprocess.Popen(
        cmd + ["--set", "num_replicas=1"],
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
        pytest.fail("knowlm serve never became healthy:\n" + log_path.read_text()[-3000:])
    yield dict(pid=proc.pid, port=port, stats=stats, metrics=metrics)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        log.close()


@pytest.mark.slow
def test_every_process_knowlm_serve_started_listens_on_loopback_only(server):
    wanted = {server["port"], server["stats"], server["metrics"]}
    deadline = time.monotonic() + 20
    while True:  # HAProxy opens its ports a moment after the first health check passes
        sockets = _listening(server["pid"])
        if wanted <= {port for _, _, port in sockets} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet", "haproxy"} <= names, sorted(sockets)  # the listing sees them all
    assert wanted <= {port for _, _, port in sockets}, sorted(sockets)
    public = [s for s in sockets if not _is_loopback(s[1])]
    assert not public, f"listening beyond loopback: {public}"
    r = requests.get(f"http://127.0.0.1:{server['stats']}/stats", timeout=10)  # open, on loopback
    assert r.status_code == 200 and "HAProxy" in r.text


@pytest.mark.slow
def test_its_ray_refuses_a_client_without_the_token(server):
    gcs = [port for name, _, port in _listening(server["pid"]) if name == "gcs_server"]
    assert len(gcs) == 1, gcs
    _assert_gcs_wants_the_token(gcs[0])


def _assert_gcs_wants_the_token(gcs_port: int) -> None:
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    request = gcs_service_pb2.GetAllNodeInfoRequest()
    with grpc.insecure_channel(f"127.0.0.1:{gcs_port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetAllNodeInfo(request, timeout=20)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        with pytest.raises(grpc.RpcError) as wrong:
            stub.GetAllNodeInfo(request, timeout=20, metadata=[("authorization", "Bearer not-the-token")])
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the same call with the token Ray keeps for this user succeeds: the token is what was missing
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        reply = stub.GetAllNodeInfo(request, timeout=20, metadata=[("authorization", f"Bearer {token}")])
    assert [n.node_manager_address for n in reply.node_info_list] == ["127.0.0.1"]


# ------------------------------------------------------------------ `serve run` on the shipped config
TINY = REPO / "serve_configs" / "tiny.yaml"


def _tiny_header() -> tuple[dict[str, str], list[str]]:
    """The environment settings and the command of tiny.yaml's first line."""
    words = shlex.split(TINY.read_text(encoding="utf-8").splitlines()[0].removeprefix("# "))
    env = dict(w.split("=", 1) for w in itertools.takewhile(lambda w: "=" in w, words))
    return env, words[len(env) :]


def test_tiny_yaml_runs_serve_run_with_the_settings_knowlm_gives_its_own_ray():
    """`serve run` starts its Ray before any knowlm code runs, so the header's command carries
    exactly what runtime.private_ray_env sets for the Ray that knowlm starts."""
    env, cmd = _tiny_header()
    assert cmd == ["serve", "run", "serve_configs/tiny.yaml"]
    clean = {k: v for k, v in os.environ.items() if k not in (AUTH_MODE_ENV, LOOPBACK_ENV)}
    script = (
        "import json, os\nfrom knowlm_ray.runtime import private_ray_env\nprivate_ray_env()\n"
        f"print(json.dumps({{k: os.environ[k] for k in {[AUTH_MODE_ENV, LOOPBACK_ENV]!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=clean, capture_output=True, text=True, check=True)
    assert env == json.loads(out.stdout.splitlines()[-1]) == {AUTH_MODE_ENV: "token", LOOPBACK_ENV: "0"}
    assert "auth disabled" not in TINY.read_text(encoding="utf-8").lower()


@pytest.mark.slow
def test_serve_run_as_tiny_yaml_says_listens_on_loopback_only_and_wants_the_token(tiny_model, tmp_path):
    """The header's command, typed in a shell without Ray settings, on a copy of tiny.yaml that
    serves the test model on a free port: every process it started listens on loopback only and
    its Ray refuses a client without the token."""
    import yaml

    header_env, cmd = _tiny_header()
    config = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    port = _free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"] = str(tiny_model)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in (ADMIN_HOST_ENV, BINARY_ENV)}
    env.update(header_env, PYTHONPATH=str(REPO))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / cmd[0]), *cmd[1:-1], str(path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "serve run never became healthy:\n" + log_path.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        sockets = _listening(proc.pid)
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names and port in {p for _, _, p in sockets}, sorted(sockets)
        public = [s for s in sockets if not _is_loopback(s[1])]
        assert not public, f"listening beyond loopback: {public}"
        (gcs,) = [p for name, _, p in sockets if name == "gcs_server"]
        _assert_gcs_wants_the_token(gcs)
    finally:
        proc.send_signal(signal.SIGINT)  # serve run's own shutdown (Serve, then the Ray it started)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------ the wrapper alone
CONFIG = """\
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 0.0.0.0:8000
listen stats
  bind *:8404
  stats enable
"""


def test_wrapper_moves_only_the_stats_and_metrics_binds(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    script = tmp_path / "haproxy"
    script.write_text(wrapper_script("/bin/echo", "127.0.0.1", (8404, 9101)))
    script.chmod(0o700)
    out = subprocess.run([str(script), "-db", "-f", str(cfg), "-sf", "12"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-db", "-f", str(cfg), "-sf", "12"]  # the real binary gets the same arguments
    assert cfg.read_text() == CONFIG.replace("bind :9101", "bind 127.0.0.1:9101").replace(
        "bind *:8404", "bind 127.0.0.1:8404"
    )  # the HTTP frontend keeps the host it was given


def test_serve_still_writes_the_binds_the_wrapper_rewrites():
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert "bind *:{{ config.stats_port }}" in HAPROXY_CONFIG_TEMPLATE
    assert "bind :{{ config.metrics_port }}" in HAPROXY_CONFIG_TEMPLATE


def test_replica_grpc_address_on_loopback():
    from knowlm_ray.serve.private import loopback_address

    assert loopback_address("[::]:0") == loopback_address("0.0.0.0:0") == "127.0.0.1:0"
    assert loopback_address("10.0.0.5:9000") == "10.0.0.5:9000"  # an address given on purpose stays
