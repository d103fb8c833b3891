"""Process-wide runtime helpers."""

from __future__ import annotations

import logging
import os

from knowlm_ray.runtime import quiet_busy_cpu_warning


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
