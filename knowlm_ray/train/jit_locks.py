"""Stale locks of torch's JIT extension builds, cleared before DeepSpeed starts.

DeepSpeed compiles its ops on first use (on CPU: the ``deepspeed_shm_comm`` op each worker loads
when its communication starts) through ``torch.utils.cpp_extension``, which guards a build with a
``lock`` file in the extension's folder (``FileBaton``). A process killed while it compiles leaves
the file, and every later process waits for it in ``FileBaton.wait`` forever: a training that
hangs with no message. ``clear_stale_locks`` removes such a lock when nothing uses it: no process
holds it open (the builder keeps its descriptor until it releases the lock), no compiler runs in
its folder, and it is older than ``STALE_AFTER_S``; otherwise it says which file to remove.

The folders: ``$TORCH_EXTENSIONS_DIR/<op>/`` or, unset, torch's default root
``~/.cache/torch_extensions/<py311_cpu>/<op>/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOCK_NAME = "lock"
# Older than this and unused: a lock, not a build starting. A fresh build holds its lock open from
# the moment it creates it, so the age only guards against a builder this process cannot see.
STALE_AFTER_S = 60.0
# What a torch extension build runs: ninja, the compiler driver and its passes, the linker.
COMPILERS = ("ninja", "c++", "g++", "gcc", "cc", "cc1plus", "clang", "clang++", "nvcc", "cicc", "ld", "collect2")


def extensions_root() -> Path:
    """Where torch builds JIT extensions in this process's environment."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def extension_locks(root: str | Path) -> list[Path]:
    """Every build lock under ``root``: ``<op>/lock`` ($TORCH_EXTENSIONS_DIR) or
    ``<py311_cpu>/<op>/lock`` (torch's default root)."""
    root = Path(root)
    return sorted({*root.glob(f"*/{LOCK_NAME}"), *root.glob(f"*/*/{LOCK_NAME}")})


def _is_compiler(name: str) -> bool:
    return name in COMPILERS or any(name.endswith("-" + c) for c in COMPILERS)  # x86_64-linux-gnu-g++


def lock_users(lock: Path) -> list[str]:
    """The processes (of those this user may inspect) that hold ``lock`` open or compile in its
    folder, as ``name (pid N)``."""
    import psutil

    target, folder = str(lock.absolute()), str(lock.parent.absolute())
    users = []
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or "?"
        try:
            if any(f.path == target for f in proc.open_files()):
                users.append(f"{name} (pid {proc.pid}) holds it")
            elif _is_compiler(name) and (proc.cwd() == folder or any(folder in a for a in proc.cmdline())):
                users.append(f"{name} (pid {proc.pid}) compiles there")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return users


def clear_stale_locks(root: str | Path | None = None, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Remove the unused, old build locks under ``root`` (default: ``extensions_root()``); one line
    for each lock found, saying what was done or what to remove. Call it once per node, before any
    process there starts DeepSpeed (a process waiting on a lock loads the extension as soon as the
    file goes, built or not)."""
    lines = []
    for lock in extension_locks(root if root is not None else extensions_root()):
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # its build just finished
            continue
        users = lock_users(lock)
        if users:
            lines.append(f"torch extension build lock {lock} is in use ({'; '.join(users)}): DeepSpeed waits for it")
        elif age < stale_after_s:
            lines.append(
                f"torch extension build lock {lock} is {age:.0f} s old and no process here uses it: if DeepSpeed "
                f"hangs in FileBaton.wait, remove it (rm {lock}) once no compiler runs in {lock.parent}"
            )
        else:
            lock.unlink(missing_ok=True)
            lines.append(
                f"removed the stale torch extension build lock {lock} ({age:.0f} s old; no process holds it or "
                "compiles there: a build killed part-way left it); the extension is rebuilt on first use"
            )
    return lines
