"""FastAPI exception handlers: every error leaves as ``{"error": {"message", "type"}}`` (plus
``code`` when the error has a machine-readable one).

An unexpected error never shows its text to the client: the answer is a 500 naming the request's
id, and the traceback goes to the replica's log under that id (``internal_error``). Every
response carries the id in ``X-Request-Id`` (``RequestIdMiddleware``).
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from knowlm_ray.serve.schemas import error_body

log = logging.getLogger("knowlm_ray.serve")

REQUEST_ID_HEADER = b"x-request-id"
# The id of the request being served (set by RequestIdMiddleware; "-" outside a request).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("knowlm_request_id", default="-")


def error_response(
    status: int, message: str, type: str = "invalid_request_error", code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type, code), status_code=status)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """(status, message): 400 for a body that is not JSON, 422 naming each bad field otherwise."""
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            reason = ctx.get("error", e.get("msg", "invalid JSON"))
            return 400, f"request body is not valid JSON: {reason}"
    msgs = []
    for e in errors:
        field = _field(tuple(e.get("loc", ())))
        if e.get("type") == "missing":
            msgs.append(f"{field}: field required")
        elif e.get("type") == "extra_forbidden":
            msgs.append(f"{field}: unknown field")
        elif e.get("type") == "model_attributes_type" and field == "body":
            hint = " (send Content-Type: application/json)" if isinstance(e.get("input"), (bytes, str)) else ""
            msgs.append(f"body: expected a JSON object{hint}")
        else:
            msgs.append(f"{field}: {e.get('msg', 'invalid value')}")
    return 422, "; ".join(msgs) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = describe_validation_errors(list(exc.errors()))
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), kind)


def internal_error(exc: BaseException, what: str = "request failed") -> JSONResponse:
    """The 500 for a bug: the request id for the client, the traceback for the log."""
    rid = REQUEST_ID.get()
    log.error("%s (request id %s)", what, rid, exc_info=exc)
    return error_response(500, internal_message(rid), "server_error")


def current_request_id() -> str:
    """The id of the request being served ("-" outside one)."""
    return REQUEST_ID.get()


def internal_message(rid: str | None = None) -> str:
    rid = REQUEST_ID.get() if rid is None else rid
    return f"internal server error; request id {rid} (the server's log has the details)"


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestIdMiddleware:
    """Pure ASGI, outermost: gives each request an id and answers any exception that escapes the
    app with ``internal_error`` (a 500 naming the id) instead of its text.

    Behind Serve's proxy (or HAProxy) the request already carries Serve's ``x-request-id``, which
    Serve also puts on the response: that id is used and ``add_header`` is off (``set_add_header``),
    so the header is not doubled. Elsewhere (a bare ASGI server, tests) this adds it.
    """

    add_header = True

    def __init__(self, app):
        self.app = app

    @classmethod
    def set_add_header(cls, value: bool) -> None:
        cls.add_header = value

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _header(scope, REQUEST_ID_HEADER) or uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.add_header and not any(k.lower() == REQUEST_ID_HEADER for k, _ in message.get("headers", ())):
                    message = {**message, "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # the status is sent already: all that is left is the log
                log.error("request failed after its response started (request id %s)", rid, exc_info=exc)
                return
            await internal_error(exc)(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
