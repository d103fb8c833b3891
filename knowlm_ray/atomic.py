"""Writes a reader never sees half done, that survive a crash and say so when the disk is full.

A file or directory is made under a hidden temporary name beside its target and renamed over
it (``os.replace`` is atomic within one filesystem, and a sibling is on the same one); when the
write fails the temporary goes and the target keeps its old content.

- ``atomic_path(path)``: yields a temporary path to write however the caller likes
  (pyarrow, matplotlib, gguf), ``atomic_open(path)`` a file object, ``atomic_write_text`` /
  ``atomic_write_bytes`` the one-liners.
- ``publish_dir(staging, out)`` swaps a complete directory in; ``atomic_dir(out)`` yields an
  empty staging directory and publishes it on success.

Durability: before the rename the new file (or every file and folder of the new directory) is
fsynced, and after it the folder that holds it, so a power loss leaves the old or the new
content, never a renamed but empty file.

A full disk (ENOSPC, or EDQUOT: a quota) while writing, in this process or in a Ray task writing
into a staging directory, becomes ``DiskFullError``, a user error of one line: ``no space left on
device writing X; the previous Y is intact`` (or ``Y was not created``).

Temporary names are ``.{name}.{pid}-{random}.tmp`` (``.old`` for a replaced directory on its way
out): hidden, unique per writer, and matched by ``.*.tmp`` sweeps of what a killed run left. A
directory swap is two renames (out -> .old, staging -> out); a writer killed between them leaves
``out`` missing beside its ``.old``. ``repair_swap(out)`` (run by ``atomic_dir`` / ``publish_dir``
before they write, and by readers that open an output folder) puts the ``.old`` back and removes
the temporaries of writers that are gone (their pid no longer runs: a pid is only meaningful on
its own host, so two hosts must not write one output at the same time).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from knowlm_ray.errors import UserError

PathLike = str | os.PathLike
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?P<kind>tmp|old)$")


class DiskFullError(UserError, OSError):
    """No space left on device while writing; ``written`` names the file the write failed in."""

    def __init__(self, message: str, written: str = ""):
        super().__init__(message)
        self.written = written


def sibling(path: PathLike, suffix: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.{name}.{pid}-{random}.{suffix}``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


# ------------------------------------------------------------------------------- durability
def fsync_dir(directory: PathLike) -> None:
    """Make a rename or a new entry in ``directory`` durable (filesystems that cannot fsync a
    folder answer EINVAL: nothing more to do there)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            if exc.filename is None:
                exc.filename = str(directory)
            raise
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path  # fsync's error names no file; the disk-full message needs it
        raise
    finally:
        os.close(fd)


def fsync_tree(path: PathLike) -> None:
    """fsync a file, or every regular file and folder under a directory (links are not followed)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        if not path.is_symlink():
            _fsync_file(str(path))
        return
    for root, _dirs, files in os.walk(path, topdown=False):  # a folder after what it holds
        for name in files:
            f = os.path.join(root, name)
            if not os.path.islink(f):
                _fsync_file(f)
        fsync_dir(root)


# ------------------------------------------------------------------------------- full disk
def disk_full_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error behind ``exc`` (itself, its cause or context, the cause a Ray task
    error carries, or a Ray Train worker's failure), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list):
            # copytree gathers (src, dst, "[Errno N] ...") triples and drops the errno
            for item in e.args[0]:
                code = next((c for c in DISK_FULL if f"[Errno {c}]" in str(item[-1])), None) if item else None
                if isinstance(item, tuple) and len(item) == 3 and code is not None:
                    return OSError(code, os.strerror(code), str(item[1]))
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
        # Ray Train's WorkerGroupError (rank -> the worker's exception) and ControllerError
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += [f for f in failures.values() if isinstance(f, BaseException)]
        controller = getattr(e, "controller_failure", None)
        todo.append(controller if isinstance(controller, BaseException) else None)
    return None


def disk_full_error(exc: BaseException, target: PathLike, existed: bool, staging: PathLike | None = None):
    """A ``DiskFullError`` for writing ``target`` when ``exc`` comes from a full disk, else None.
    A file inside ``staging`` is named as where it was going to be, under ``target``."""
    cause = disk_full_cause(exc)
    if cause is None:
        return None
    target = Path(target)
    # filename2: the destination of a two-path call (shutil's copy names the source first)
    written = cause.written if isinstance(cause, DiskFullError) else (cause.filename2 or cause.filename or "")
    written = str(written or target)
    if staging is not None:
        with contextlib.suppress(ValueError):
            written = str(target / Path(written).relative_to(staging))
    if Path(written).parent == target.parent and _LEFTOVER.match(Path(written).name):
        written = str(target)  # our own temporary name: the user knows the target
    kept = f"the previous {target} is intact" if existed else f"{target} was not created"
    return DiskFullError(f"no space left on device writing {written}; {kept}", written)


# ------------------------------------------------------------------------------- repair
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def repair_swap(out: PathLike) -> list[str]:
    """Undo or clean what writers killed mid-way left beside ``out`` (see the module's docstring):
    ``out`` missing beside a ``.old`` -> the newest ``.old`` is renamed back; the other ``.old``
    and ``.tmp`` siblings of dead writers are removed. Returns what was done, one line each."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    olds: list[Path] = []
    leftovers: list[Path] = []
    prefix = f".{out.name}."
    with os.scandir(parent) as it:
        for entry in it:
            if not entry.name.startswith(prefix):
                continue
            m = _LEFTOVER.match(entry.name)
            if m is None or m["name"] != out.name or _pid_alive(int(m["pid"])):
                continue
            (olds if m["kind"] == "old" else leftovers).append(Path(entry.path))
    done = []
    if olds and not _exists(out):
        newest = max(olds, key=lambda p: p.lstat().st_mtime_ns)
        os.replace(newest, out)
        olds.remove(newest)
        done.append(f"restored {out} from {newest.name} (a writer was stopped between its two renames)")
    for p in olds + leftovers:
        _remove(p)
        done.append(f"removed {p.name} (left by a stopped writer)")
    if done:
        fsync_dir(parent)
    return done


# ------------------------------------------------------------------------------- writers
@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (its directory is created); when the block ends
    without an exception the temporary is fsynced and replaces ``path``, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = _exists(path)
    tmp = sibling(path)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        _remove(tmp)
        full = None if isinstance(exc, DiskFullError) else disk_full_error(exc, path, existed)
        if full is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """``open`` for writing whose file appears at ``path`` only once it is complete and closed.

    Text modes default to UTF-8. The file gets the usual umask modes (unlike mkstemp's 0600).
    """
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def publish_dir(staging: PathLike, out: PathLike) -> Path:
    """Swap the complete directory ``staging`` in as ``out``; what was at ``out`` is deleted.

    The staging tree is fsynced first. The old ``out`` is renamed aside (a directory cannot be
    replaced by a rename while it has files), so a reader sees the old or the new, never a mix.
    If the swap itself fails the old one is put back; if the process dies between the renames,
    ``repair_swap`` puts it back on the next run.
    """
    staging, out = Path(staging), Path(out)
    repair_swap(out)
    existed = _exists(out)
    try:
        fsync_tree(staging)
    except BaseException as exc:
        full = None if isinstance(exc, DiskFullError) else disk_full_error(exc, out, existed, staging)
        if full is not None:
            raise full from exc
        raise
    old = None
    if existed:
        old = sibling(out, "old")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        _remove(old)
    return out


@contextlib.contextmanager
def atomic_dir(out: PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; on success it is published as ``out``
    (``publish_dir``), on failure removed with everything written into it. A full disk anywhere
    in it (here or in a Ray task writing into it) is a ``DiskFullError`` naming ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    repair_swap(out)
    existed = _exists(out)
    staging = sibling(out)
    made = False
    try:
        staging.mkdir()  # umask modes (mkdtemp's are 0700); fails rather than reuse a name
        made = True
        yield staging
        publish_dir(staging, out)
    except BaseException as exc:
        if made:
            _remove(staging)
        full = disk_full_error(exc, out, existed, staging)
        if full is not None:
            raise full from exc
        raise


def write_json_atomic(obj: Any, out: PathLike) -> None:
    """Write JSON to a temp file beside ``out`` then rename: never a half-written file."""
    with atomic_open(out) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
