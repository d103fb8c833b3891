"""Process-wide runtime helpers."""

from __future__ import annotations

import logging
import os

import pytest

from knowlm_ray.runtime import quiet_busy_cpu_warning
from tests.ray_processes import free_port, start_ray_head, stop_ray


def test_busy_cpu_warning_is_dropped_and_other_warnings_kept(caplog):
    logger = logging.getLogger("ray.data.dataset")
    before = list(logger.filters)
    for f in before:  # a corpus run earlier in this process may have installed it
        logger.removeFilter(f)
    busy = (
        "Warning: The Ray cluster currently does not have any available CPUs. "
        "The Dataset job will hang unless more CPUs are freed up."
    )
    try:
        with caplog.at_level(logging.WARNING, logger="ray.data.dataset"):
            logger.warning(busy)
            assert busy in caplog.text  # shown until a job says its own tasks hold the CPUs
            caplog.clear()
            quiet_busy_cpu_warning()
            quiet_busy_cpu_warning()  # once is enough; twice adds nothing
            logger.warning(busy)
            logger.warning("a block was spilled")
        assert busy not in caplog.text and "a block was spilled" in caplog.text
        assert len(logger.filters) == 1
    finally:
        for f in list(logger.filters):
            logger.removeFilter(f)
        for f in before:
            logger.addFilter(f)


def test_a_ray_started_here_is_private_and_an_explicit_mode_stands(monkeypatch):
    from ray._private import ray_constants, services
    from ray._raylet import Config

    from knowlm_ray.runtime import AUTH_MODE_ENV, LOOPBACK_ENV, QUIET_ENV, private_ray_env, set_default_env

    for key in (AUTH_MODE_ENV, LOOPBACK_ENV):  # set first, so that undo() restores what was there
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setattr("ray._private.worker._global_node", None)
    try:
        set_default_env()
        assert AUTH_MODE_ENV not in QUIET_ENV and AUTH_MODE_ENV not in os.environ  # a join decides nothing
        private_ray_env()
        assert (os.environ[AUTH_MODE_ENV], os.environ[LOOPBACK_ENV]) == ("token", "0")
        assert services.get_node_ip_address() == "127.0.0.1"  # Ray's choice of this node's address
        monkeypatch.setenv(AUTH_MODE_ENV, "disabled")  # the user's explicit choice is kept
        private_ray_env()
        assert os.environ[AUTH_MODE_ENV] == "disabled"
    finally:
        monkeypatch.undo()
        Config.initialize("")  # Ray's cached config as the environment is again


# ------------------------------------------------------------- a `ray start` on this machine
# Ray finds it through the ray_current_cluster file in its temp dir; RAY_TMPDIR gives these tests
# their own, so neither the other tests' Rays nor a user's `ray start` are seen or touched.
INIT_AND_REPORT = """
import json, ray
from knowlm_ray.runtime import init_ray
init_ray(num_cpus=2)
print(json.dumps({"cpus": ray.cluster_resources().get("CPU"), "gcs": ray.get_runtime_context().gcs_address}))
"""


def test_a_stale_cluster_file_names_no_cluster(tmp_path, monkeypatch):
    """A `ray start` killed without `ray stop` leaves its file: nothing runs there, so no attach."""
    from knowlm_ray.runtime import cluster_address, local_cluster_address

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert local_cluster_address() is None and cluster_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's own word for "start one here"
    assert cluster_address() is None


@pytest.mark.slow
def test_init_ray_attaches_to_a_ray_start_on_this_machine_and_local_starts_its_own(monkeypatch):
    """Plain ray.init(num_cpus=...) attaches by itself to the README's `ray start --head` and then
    raises ("When connecting to an existing cluster, num_cpus ... must not be provided"). init_ray
    attaches as `serve run` does and says so; RAY_ADDRESS=local starts a private Ray beside it."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from knowlm_ray.runtime import local_cluster_address

    bin_dir = Path(sys.executable).parent
    temp_dir = tempfile.mkdtemp(prefix="krs", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=temp_dir, RAY_AUTH_MODE="token", PATH=f"{bin_dir}:{env.get('PATH', '')}")
    try:
        start_ray_head(bin_dir, env, num_cpus=1)
        address = (Path(temp_dir) / "ray" / "ray_current_cluster").read_text().strip()
        monkeypatch.setenv("RAY_TMPDIR", temp_dir)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        assert local_cluster_address() == address

        attached = subprocess.run(
            [sys.executable, "-c", INIT_AND_REPORT], env=env, capture_output=True, text=True, timeout=120
        )
        assert attached.returncode == 0, attached.stderr[-3000:]
        assert json.loads(attached.stdout.splitlines()[-1]) == {"cpus": 1.0, "gcs": address}  # its CPUs, not 2
        notes = [line for line in attached.stderr.splitlines() if line.startswith("[knowlm]")]
        assert len(notes) == 1 and address in notes[0] and "RAY_ADDRESS=local" in notes[0], attached.stderr

        own = subprocess.run(
            [sys.executable, "-c", INIT_AND_REPORT],
            env={**env, "RAY_ADDRESS": "local"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert own.returncode == 0, own.stderr[-3000:]
        report = json.loads(own.stdout.splitlines()[-1])
        assert report["cpus"] == 2.0 and report["gcs"].startswith("127.0.0.1:"), report  # private: loopback
        assert report["gcs"] != address and "[knowlm]" not in own.stderr
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
