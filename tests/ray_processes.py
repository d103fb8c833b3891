"""A Ray that a test starts with `ray start` in a temp dir of its own, and free ports for it."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_head(bin_dir: Path, env: dict[str, str], num_cpus: int) -> None:
    """`ray start --head` with ``env`` (its RAY_TMPDIR: the test's own temp dir), every port a
    free one, no dashboard; ``stop_ray(temp_dir)`` ends it."""
    subprocess.run(
        [str(bin_dir / "ray"), "start", "--head", f"--num-cpus={num_cpus}", f"--port={free_port()}",
         "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, check=True, timeout=90,
    )  # fmt: skip


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
