"""Process-wide runtime helpers."""

from __future__ import annotations

import logging

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
