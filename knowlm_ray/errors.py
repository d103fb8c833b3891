"""What counts as a user error: a problem the person running a command caused and can fix.

A bad config, a path that does not exist, input data that cannot be used. Every such exception
derives from ``UserError`` and says what is wrong and where (the config key, the file and line),
so ``user_errors`` can print it as one line, ``error: <message>``, and exit with
status 2. Everything else is a bug and keeps its traceback. This module imports nothing of the
package: every layer may raise these.

The domain errors that are user errors (each ``class XError(UserError, ValueError)``):
``config.ConfigError``, ``corpus.shards.ShardError``, ``ie.schema.SchemaError``,
``ie.extract.IERequestError``, ``instruct.alpaca.RecordError``, ``train.data.DataError``,
``train.deepspeed_presets.DeepSpeedConfigError``, ``train.checkpoint.IncompatibleCheckpoint``,
``train.plot.PlotError``, ``models.checkpoint.WeightsError`` (and ``MergeError``),
``models.vocab.VocabError``; ``atomic.DiskFullError`` (no space left while writing an output; it
is also an ``OSError``).

A plain ``FileNotFoundError`` / ``OSError`` / ``ValueError`` is *not* one: raised from deep inside
(a library, a path the code built itself) it is most often a bug, and its traceback is what finds
it. Code that checks a user's path raises ``MissingPathError`` (still a ``FileNotFoundError``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A problem the user caused and can fix; the message names what and where."""


class InputError(UserError, ValueError):
    """Bad input data or a bad command-line argument (not a config key)."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user named does not exist; the message names the key or input and the path."""


def user_error_of(exc: BaseException) -> UserError | None:
    """``exc`` itself if it is a user error, or the user error a Ray task raised (a RayTaskError
    is an instance of its cause's class, but its text holds the remote traceback)."""
    if not isinstance(exc, UserError):
        return None
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
    return cause if isinstance(cause, UserError) else exc


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A user error inside: ``error: <message>`` on stderr and SystemExit(2); a bug: raised as is."""
    try:
        yield
    except Exception as exc:
        err = user_error_of(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
