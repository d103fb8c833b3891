"""A build lock left by a DeepSpeed op compile that was killed: removed when nothing uses it, kept
(with the file to remove named) when a process holds it, a compiler runs there, or it is young."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from knowlm_ray.train.jit_locks import STALE_AFTER_S, clear_stale_locks, extension_locks, extensions_root


def _lock(folder: Path, age_s: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    os.close(os.open(lock, os.O_CREAT | os.O_EXCL))  # what FileBaton.try_acquire makes
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def _wait_until(pred, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_stale_lock_is_removed_and_a_waiting_build_goes_on(tmp_path, monkeypatch):
    from torch.utils.file_baton import FileBaton

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_root() == tmp_path
    lock = _lock(tmp_path / "deepspeed_shm_comm", age_s=STALE_AFTER_S + 600)
    # what every later DeepSpeed start did: wait for the lock, forever
    waiter = threading.Thread(target=FileBaton(str(lock), wait_seconds=0.05).wait, daemon=True)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()
    (line,) = clear_stale_locks()
    assert re.fullmatch(
        rf"removed the stale torch extension build lock {re.escape(str(lock))} \((66\d) s old; no process holds it "
        r"or compiles there: a build killed part-way left it\); the extension is rebuilt on first use",
        line,
    ), line
    assert not lock.exists()
    waiter.join(5)
    assert not waiter.is_alive()
    assert clear_stale_locks() == []  # nothing left to say


def test_torch_default_root_layout_is_searched(tmp_path):
    """Without TORCH_EXTENSIONS_DIR: ``~/.cache/torch_extensions/py311_cpu/<op>/lock``."""
    lock = _lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm", age_s=STALE_AFTER_S + 5)
    other = _lock(tmp_path / "py311_cpu" / "cpu_adam", age_s=1)
    assert extension_locks(tmp_path) == [other, lock]
    lines = clear_stale_locks(tmp_path)
    assert not lock.exists() and other.exists()
    assert re.fullmatch(
        rf"torch extension build lock {re.escape(str(other))} is \d s old and no process here uses it: if DeepSpeed "
        rf"hangs in FileBaton.wait, remove it \(rm {re.escape(str(other))}\) once no compiler runs in "
        + re.escape(str(other.parent)),
        lines[0],
    ), lines[0]
    assert lines[1].startswith(f"removed the stale torch extension build lock {lock} (")


def test_a_lock_held_by_a_live_build_is_kept_however_old(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    # another process takes torch's own FileBaton and keeps it, as a compiling process does
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom torch.utils.file_baton import FileBaton\n"
            f"assert FileBaton({str(lock)!r}).try_acquire()\nprint('held', flush=True)\ntime.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        then = time.time() - 3600
        os.utime(lock, (then, then))
        lines = clear_stale_locks(tmp_path)
        assert lock.exists()
        assert len(lines) == 1 and lines[0].startswith(f"torch extension build lock {lock} is in use ("), lines
        assert lines[0].endswith(f" (pid {holder.pid}) holds it): DeepSpeed waits for it"), lines
    finally:
        holder.kill()
        holder.wait()
    # its holder gone (killed mid-build), the same lock is stale
    assert clear_stale_locks(tmp_path)[0].startswith(f"removed the stale torch extension build lock {lock}")


@pytest.mark.skipif(shutil.which("ninja") is None, reason="no ninja")
def test_a_lock_whose_folder_a_compiler_works_in_is_kept(tmp_path):
    """ninja building in the extension's folder, the lock not open in any process (a builder this
    user cannot see, say): left alone."""
    folder = tmp_path / "deepspeed_shm_comm"
    lock = _lock(folder, age_s=3600)
    (folder / "build.ninja").write_text("rule slow\n  command = sleep 60\nbuild out: slow\n")
    ninja = subprocess.Popen(["ninja", "-C", str(folder)], stdout=subprocess.DEVNULL)
    try:
        _wait_until(lambda: any(p.name() == "sleep" for p in _children(ninja.pid)))
        lines = clear_stale_locks(tmp_path)
        assert lock.exists()
        assert len(lines) == 1 and f"ninja (pid {ninja.pid}) compiles there" in lines[0], lines
    finally:
        for child in _children(ninja.pid):
            child.kill()
        ninja.kill()
        ninja.wait()


def _children(pid: int):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
