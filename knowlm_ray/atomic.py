"""Writes a reader never sees half done.

A file or directory is made under a hidden temporary name beside its target and renamed over
it (``os.replace`` is atomic within one filesystem, and a sibling is on the same one); when the
write fails the temporary goes and the target keeps its old content.

- ``atomic_path(path)``: yields a temporary path to write however the caller likes
  (pyarrow, matplotlib, gguf), ``atomic_open(path)`` a file object, ``atomic_write_text`` /
  ``atomic_write_bytes`` the one-liners.
- ``publish_dir(staging, out)`` swaps a complete directory in; ``atomic_dir(out)`` yields an
  empty staging directory and publishes it on success.

Temporary names are ``.{name}.{pid}-{random}.tmp`` (``.old`` for a replaced directory on its way
out): hidden, unique per writer, and matched by ``.*.tmp`` sweeps of what a killed run left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike


def sibling(path: PathLike, suffix: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.{name}.{pid}-{random}.{suffix}``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (its directory is created); when the block ends
    without an exception the temporary replaces ``path``, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
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

    The old ``out`` is renamed aside first (a directory cannot be replaced by a rename while it
    has files), so a reader sees the old or the new, never a mix. If the swap itself fails the
    old one is put back.
    """
    staging, out = Path(staging), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        old = sibling(out, "old")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        _remove(old)
    return out


@contextlib.contextmanager
def atomic_dir(out: PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; on success it is published as ``out``
    (``publish_dir``), on failure removed with everything written into it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(out)
    staging.mkdir()  # umask modes (mkdtemp's are 0700); fails rather than reuse a name
    try:
        yield staging
        publish_dir(staging, out)
    except BaseException:
        _remove(staging)
        raise


def write_json_atomic(obj: Any, out: PathLike) -> None:
    """Write JSON to a temp file beside ``out`` then rename: never a half-written file."""
    with atomic_open(out) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
