"""HTTP helpers shared by the clients: auth header, and the server's error JSON as one exception.

Every knowlm server error is ``{"error": {"message", "type"}}``, with ``code`` for some (e.g.
``context_length_exceeded``; 503s add ``Retry-After``);
``check`` turns any non-2xx answer — or no answer at all — into a ``ServerError`` whose text a
person can read.
"""

from __future__ import annotations

from typing import Any


class ServerError(RuntimeError):
    """The server said no (``status`` set) or could not be reached (``status`` None).

    ``kind`` is the error's ``type``, ``code`` its machine-readable reason (None when it has none).
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        kind: str | None = None,
        retry_after: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.retry_after, self.code = status, kind, retry_after, code

    def __str__(self) -> str:
        msg = self.args[0]
        if self.status is None:
            return msg
        head = f"HTTP {self.status}" + (f" ({self.kind})" if self.kind else "")
        tail = f"; retry after {self.retry_after} s" if self.retry_after else ""
        return f"{head}: {msg}{tail}"


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check(resp) -> None:
    """Raise ``ServerError`` for a non-2xx ``requests`` response, with the server's own message."""
    if resp.status_code < 400:
        return
    message, kind, code = None, None, None
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            message, kind, code = err.get("message"), err.get("type"), err.get("code")
    except (ValueError, AttributeError):
        pass
    if message is None:  # not one of ours (a proxy, a wrong URL): show what came back
        message = (resp.text or resp.reason or "no body").strip()[:300]
    raise ServerError(message, resp.status_code, kind, resp.headers.get("Retry-After"), code)


def post(url: str, body: dict[str, Any], api_key: str | None, timeout: float, stream: bool = False):
    """``requests.post`` that raises ``ServerError`` for no server as well as for an error answer."""
    import requests

    try:
        resp = requests.post(url, json=body, headers=headers(api_key), timeout=timeout, stream=stream)
    except requests.Timeout:
        raise ServerError(f"no answer from {url} within {timeout:g} s") from None
    except requests.ConnectionError:
        raise ServerError(f"cannot reach {url}: no server answers there (is it running?)") from None
    except requests.RequestException as exc:
        raise ServerError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    try:
        check(resp)
    except ServerError:
        resp.close()
        raise
    return resp
