"""FastAPI exception handlers: every error leaves as ``{"error": {"message", "type"}}`` (plus
``code`` when the error has a machine-readable one)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from knowlm_ray.serve.schemas import error_body

log = logging.getLogger("knowlm_ray.serve")


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
