"""Ending a Ray that a test started with `ray start` in its own temp dir."""

from __future__ import annotations

import signal


def stop_ray(temp_dir: str) -> None:
    """End the processes whose command lines name ``temp_dir`` and their children (not
    `ray stop`: that stops every Ray on the machine, other tests' included)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
                procs += [p, *p.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    for p in psutil.wait_procs(procs, timeout=10)[1]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
