"""A quiet console for a long command: its own steps on the terminal, everything else in a log file.

Inside ``quiet_console(log)`` file descriptors 1 and 2 point at ``log``, so whatever the process
writes lands there: Python's prints and logging, Ray's start-up lines, the worker lines Ray
forwards to the driver, Ray Data's and Train's messages, C++ core logs, progress bars, and the
output of any subprocess started meanwhile. ``say()`` writes to the terminal (and to the log, so
the log reads as the whole story). A failing step calls ``show_tail()``: the log's last lines go
to the terminal; the traceback goes to the log and, once the descriptors are back, to the
terminal as usual. A leaf module: it imports nothing of the package.

Used by ``knowlm demo`` (knowlm_ray/demo.py) and by every job (knowlm_ray/entry.py: ``execute``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

_console: IO[str] | None = None
_log_path: Path | None = None
_follower: tuple[threading.Thread, threading.Event] | None = None  # quiet_console's progress thread
_lock = threading.Lock()  # the progress thread and the main thread both write to the terminal


def say(*parts: object) -> None:
    """Print to the terminal; inside ``quiet_console`` also a copy to its log."""
    if _console is None:
        print(*parts, flush=True)
        return
    with _lock:
        print(*parts, file=_console, flush=True)
    print(*parts, flush=True)  # fd 1: the log


def log_path() -> Path | None:
    return _log_path


def drain_progress() -> None:
    """Let the progress thread show what the log holds so far, then stop it: a line said after
    this (a step's end, a failure's tail) comes after the progress lines before it."""
    global _follower
    sys.stdout.flush()
    sys.stderr.flush()
    if _follower is not None:
        thread, stop = _follower
        stop.set()  # the thread reads on to the log's end, then returns
        thread.join(timeout=30)
        _follower = None


def show_tail(title: str, lines: int = 40) -> None:
    """``title`` and the last ``lines`` lines of the log, on the terminal."""
    if _console is None or _log_path is None:
        return
    drain_progress()
    with open(_log_path, encoding="utf-8", errors="replace") as f:
        last = deque(f, maxlen=lines)
    with _lock:
        print(f"{title}; the last {len(last)} lines of {_log_path}:", file=_console)
        for line in last:
            _console.write("    " + line.rstrip("\n") + "\n")
        _console.flush()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_PREFIX = re.compile(r"^\((\w+) pid=\d+(?:, ip=[\d.]+)?\)\s*")
# Python logging's default Ray format: "2026-01-01 10:00:00,123\tINFO file.py:12 -- message"
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ \S+ -- ")


def _echo_progress(
    path: Path,
    offset: int,
    pattern: re.Pattern | None,
    every_s: float,
    stop: threading.Event,
    echo: re.Pattern | None = None,
) -> None:
    """Follow the log from ``offset``; a line matching ``pattern`` goes to the terminal when
    ``every_s`` seconds have passed since the last one shown (the others stay in the log only), a
    line matching ``echo`` (and not ``pattern``) always."""
    last_said = -every_s
    partial = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        while True:
            line = f.readline()
            if not line:
                if stop.is_set():
                    if not partial:
                        return
                    line = "\n"  # the last, unterminated line
                else:
                    time.sleep(0.2)
                    continue
            if not line.endswith("\n"):  # a line still being written (a long one comes in pieces)
                partial += line
                continue
            line, partial = partial + line, ""
            text = _LOG_PREFIX.sub("", _RAY_PREFIX.sub("", _ANSI.sub("", line).strip()))
            if pattern is not None and pattern.search(text):
                if time.monotonic() - last_said >= every_s:
                    say_console("    " + text)
                    last_said = time.monotonic()
            elif echo is not None and echo.search(text):
                say_console("    " + text)


def say_console(text: str) -> None:
    """One line on the terminal only (the log already holds it)."""
    with _lock:
        if _console is not None and not _console.closed:
            print(text, file=_console, flush=True)


@contextmanager
def quiet_console(
    log: str | Path,
    progress: str | None = None,
    every_s: float = 15.0,
    echo: str | None = None,
    title: str | None = None,
) -> Iterator[Path]:
    """Send file descriptors 1 and 2 to ``log`` (appended) for the duration; the path is said once
    (``title; full log: PATH`` with a ``title``). ``progress``: a regular expression; log lines that
    match it (Ray's ``(Actor pid=N)`` prefix and a logging timestamp taken off) are shown on the
    terminal too, at most one per ``every_s`` seconds; ``echo``: lines shown every time."""
    global _console, _log_path, _follower
    if _console is not None:  # nested: the outer log already holds everything
        yield _log_path  # type: ignore[misc]
        return
    path = Path(log).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # fd 1 is a file now: line by line, so the log (and the progress echo) keeps the order of events
    line_buffering = getattr(sys.stdout, "line_buffering", None)
    with suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    saved_out, saved_err = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _console = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    _log_path = path
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    say(f"{title}; full log: {path}" if title else f"full log: {path}")
    if progress or echo:
        sys.stdout.flush()
        stop = threading.Event()
        follower = threading.Thread(  # from the log's end now: the thread may start after the first lines
            target=_echo_progress,
            args=(path, path.stat().st_size, re.compile(progress) if progress else None, every_s, stop),
            kwargs={"echo": re.compile(echo) if echo else None},
            name="knowlm-progress",
            daemon=True,
        )
        follower.start()
        _follower = (follower, stop)
    try:
        yield path
    except BaseException:
        traceback.print_exc()  # into the log; the terminal gets it when it propagates
        raise
    finally:
        drain_progress()
        if line_buffering is not None:
            with suppress(Exception):
                sys.stdout.reconfigure(line_buffering=line_buffering)  # type: ignore[union-attr]
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        with _lock:
            _console.close()
            _console, _log_path = None, None
