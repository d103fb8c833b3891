"""Choosing Serve's HTTP front (knowlm_ray/serve/ingress.py): the environment it sets, and the
clear errors when it cannot be set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from knowlm_ray.config import ConfigError
from knowlm_ray.serve.ingress import HAPROXY_FLAG, current_ingress, haproxy_binary, ingress_env, use_ingress


def test_ingress_env_and_back():
    for name in ("proxy", "haproxy"):
        assert current_ingress(ingress_env(name)) == name
    assert current_ingress({}) == "proxy"
    with pytest.raises(ConfigError, match="'nginx' is not one of proxy, haproxy"):
        ingress_env("nginx")


def test_bundled_haproxy_binary_runs():
    out = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "HAProxy version" in out.stdout


def test_binary_override_must_be_executable(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="RAY_SERVE_HAPROXY_BINARY_PATH=.*not an executable"):
        haproxy_binary()


def test_attached_cluster_keeps_its_own_ingress(monkeypatch):
    """With RAY_ADDRESS the cluster was started already: a different ingress is an error that
    says how to start it, the same one is accepted, and nothing is changed either way."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.delenv(HAPROXY_FLAG, raising=False)
    with pytest.raises(ConfigError, match=f"RAY_ADDRESS.*{HAPROXY_FLAG}=1 in the environment of `ray start`"):
        use_ingress("haproxy")
    use_ingress("proxy")
    assert HAPROXY_FLAG not in os.environ


def test_cli_rejects_ingress_for_a_running_cluster_in_one_line(tiny_model):
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens there: no Ray is reached
    env.pop(HAPROXY_FLAG, None)
    out = subprocess.run(
        [sys.executable, "-m", "knowlm_ray.cli", "serve", "--model", str(tiny_model), "--ingress", "haproxy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--ingress haproxy: attached to the Ray cluster at RAY_ADDRESS" in out.stderr


def test_cli_set_rejects_unknown_app_options(tiny_model):
    out = subprocess.run(
        [sys.executable, "-m", "knowlm_ray.cli", "serve", "--model", str(tiny_model), "--set", "max_batch_sze=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "max_batch_sze: unknown key" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "knowlm_ray.cli", "serve", "--model", str(tiny_model), "--set", "port=9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--set port=...: use --port" in out.stderr and "Traceback" not in out.stderr
