"""Request errors of the generation layer: what the caller got wrong, as exceptions.

The HTTP layer (``knowlm_ray.serve``) turns them into 400 / 404 bodies; in-process callers
(extraction, the local chat) catch them directly.
"""

from __future__ import annotations

# Error `code`s: machine-readable reasons, named as OpenAI names them; most errors have none.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # prompt (or max_tokens) past the context


class RequestError(ValueError):
    """A request the model cannot serve (e.g. longer than its context): the client's fault (400).

    ``code`` is a machine-readable reason (OpenAI's error ``code``, e.g. ``context_length_exceeded``)
    so callers need not read the message; None for errors that have none.
    """

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code  # kept in __dict__, so it survives pickling across Ray


class UnknownModelError(RequestError):
    """A request named a model/adapter that is not configured (404)."""
