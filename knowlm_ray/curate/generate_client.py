"""One OpenAI-compatible endpoint, asked over HTTP with retries (httpx's async client).

A request answered 429 or 5xx, timed out or refused at the socket is tried again, up to
``max_retries`` times, after ``retry_backoff_s`` doubled per retry (jittered, capped at
``retry_max_backoff_s``; a longer ``Retry-After`` wins, as ``knowlm serve`` sends with its 503).
A 200 whose body is not an OpenAI answer is *malformed*: returned as such and counted by the
caller, never fatal. 401 / 403 / 404 mean every request will fail the same way (key, URL or
model): a user error that stops the run. Other 4xx fail just that request (``RequestFailed``).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass

import httpx

from knowlm_ray.errors import UserError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class EndpointError(UserError):
    """The endpoint refuses this run as configured (API key, base_url or model)."""


class RequestFailed(Exception):
    """One request that could not be answered: retries used up, or a 4xx about the request."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


@dataclass
class Answer:
    text: str | None  # None: the 200's body was not an OpenAI answer (see malformed)
    finish_reason: str | None
    request_id: str | None
    attempts: int
    malformed: str | None = None


def read_answer(body: bytes, api: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(text, finish_reason, id, why malformed) of a 200's body."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None, None, "body is not JSON"
    if not isinstance(data, dict):
        return None, None, None, "body is not a JSON object"
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, None, rid, "no choices[0]"
    choice = choices[0]
    if api == "chat":
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else None
        where = "choices[0].message.content"
    else:
        text, where = choice.get("text"), "choices[0].text"
    if not isinstance(text, str):
        return None, None, rid, f"{where} is not a string"
    reason = choice.get("finish_reason")
    return text, reason if isinstance(reason, str) else None, rid, None


class Endpoint:
    """``async with Endpoint(...) as ep: await ep.ask(prompt, ...)``; counts every HTTP attempt."""

    def __init__(
        self,
        base_url: str,
        api: str = "chat",
        api_key: str | None = None,
        *,
        model: str | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        retry_backoff_s: float = 1.0,
        retry_max_backoff_s: float = 30.0,
        timeout_s: float = 120.0,
        seed: int = 0,
    ):
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.model = model
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.retry_max_backoff_s = retry_max_backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout_s
        self._limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._jitter = random.Random(seed)
        self.sent = 0  # HTTP attempts
        self.retried = 0
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Endpoint:
        self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.aclose()

    def _refused(self, r: httpx.Response, what: str) -> None:
        if r.status_code in (401, 403):
            raise EndpointError(
                f"{what} answered {r.status_code}: the API key was refused (set api_key or the variable "
                f"api_key_env names): {r.text[:200]}"
            )
        if r.status_code == 404:
            raise EndpointError(
                f"{what} answered 404 (check base_url, e.g. http://HOST:PORT/v1, and model): {r.text[:200]}"
            )

    async def resolve_model(self) -> str:
        """``model`` as configured, else the first id of ``GET /models``."""
        if self.model:
            return self.model
        url = f"{self.base_url}/models"
        try:
            r = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise EndpointError(f"GET {url}: {type(exc).__name__}: {exc} (is the endpoint up?)") from exc
        self._refused(r, f"GET {url}")
        try:
            self.model = r.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"GET {url} gave no model id ({r.status_code}); set model in the config") from exc
        return self.model

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = self.retry_backoff_s * 2 ** (attempt - 1) * (0.5 + self._jitter.random() / 2)
        try:
            wait = max(wait, float(retry_after)) if retry_after else wait
        except ValueError:  # an HTTP date: keep our own backoff
            pass
        return min(wait, self.retry_max_backoff_s)

    async def ask(self, prompt: str, max_tokens: int, **sampling: float) -> Answer:
        """One prompt (a user message for chat) with retries; sampling: temperature, top_p, ..."""
        if self.api == "chat":
            url = f"{self.base_url}/chat/completions"
            body = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        else:
            url = f"{self.base_url}/completions"
            body = {"model": self.model, "prompt": prompt}
        body.update(max_tokens=max_tokens, **sampling)
        attempt = 0
        while True:
            attempt += 1
            self.sent += 1
            retry_after = None
            try:
                r = await self._client.post(url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
            except httpx.RequestError as exc:  # connection refused / reset, a body that would not decode
                last = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 200:
                    text, reason, rid, bad = read_answer(r.content, self.api)
                    return Answer(text, reason, rid or r.headers.get("x-request-id"), attempt, bad)
                self._refused(r, f"POST {url}")
                if r.status_code not in RETRY_STATUS:
                    raise RequestFailed(f"HTTP {r.status_code}: {r.text[:300]}", attempt)
                last, retry_after = f"HTTP {r.status_code}", r.headers.get("retry-after")
            if attempt > self.max_retries:
                raise RequestFailed(f"{last} after {attempt} attempts", attempt)
            self.retried += 1
            await asyncio.sleep(self._wait(attempt, retry_after))
