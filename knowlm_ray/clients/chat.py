"""``knowlm chat``: a multi-turn terminal chat with a knowlm server or a local model.

Two backends answer the same list of OpenAI-style messages:

- ``ServerBackend``: ``POST /v1/chat/completions`` with ``stream: true``; tokens print as the
  server-sent events arrive, and the last event carries ``usage``.
- ``LocalBackend``: ``GenerationEngine`` in this process (no Ray); the prompt is made by the
  server's own ``knowlm_ray.generation.chat.render_chat``, so a conversation reads the same to the model in
  both modes.

``ChatSession`` keeps the history bounded to the model's context: before a turn (local mode,
where the tokenizer is at hand) or when the server answers that the prompt is too long, the
oldest exchange is dropped and the user is told.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from knowlm_ray.clients.http import ServerError, post
from knowlm_ray.generation.errors import CONTEXT_LENGTH_EXCEEDED
from knowlm_ray.generation.params import GenerationParams

Messages = list[dict[str, str]]
OnText = Callable[[str], None]
HELP = "commands: /reset clears the history, /history shows it, /exit (or Ctrl-D) quits, /help"


class ChatError(RuntimeError):
    """A turn the model cannot answer as asked (the local engine's request errors)."""


class ContextOverflow(ChatError):
    """The conversation's prompt does not fit the model's context."""


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


def render_prompt(messages: Messages) -> str:
    """The text the model reads for ``messages``: the server's own chat rendering."""
    from knowlm_ray.generation.chat import ChatMessage, render_chat

    return render_chat([ChatMessage.model_validate(m) for m in messages])


class Backend(Protocol):
    context: int | None  # the model's context in tokens, when known here

    def prompt_tokens(self, messages: Messages) -> int | None: ...  # None: only the server knows

    def complete(self, messages: Messages, params: GenerationParams, on_text: OnText) -> Reply: ...


# ------------------------------------------------------------------------------------ server
def iter_sse(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to ``data: [DONE]``."""
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            raise ServerError(f"the server sent an event that is not JSON: {data[:200]!r}") from None


class ServerBackend:
    """A knowlm (or any OpenAI-compatible) server's ``/v1/chat/completions``, streamed."""

    context = None

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 300.0):
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.api_key, self.model, self.timeout = api_key, model, timeout

    def prompt_tokens(self, messages: Messages) -> None:
        return None

    def complete(self, messages: Messages, params: GenerationParams, on_text: OnText) -> Reply:
        body: dict[str, Any] = {
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "max_tokens": params.max_tokens,
            "repetition_penalty": params.repetition_penalty,
        }
        if self.model:
            body["model"] = self.model
        try:
            resp = post(self.url, body, self.api_key, self.timeout, stream=True)
        except ServerError as exc:
            if exc.status == 400 and exc.code == CONTEXT_LENGTH_EXCEEDED:
                raise ContextOverflow(str(exc)) from None
            raise
        parts: list[str] = []
        usage: dict[str, int] = {}
        finish = None
        try:  # closing the connection early (Ctrl-C) makes the server cancel the generation
            for event in iter_sse(resp.iter_lines(chunk_size=None)):
                if "error" in event:
                    err = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                    raise ServerError(
                        f"during the answer: {err.get('message')}",
                        resp.status_code,
                        err.get("type"),
                        code=err.get("code"),
                    )
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        parts.append(delta)
                        on_text(delta)
                    finish = choice.get("finish_reason") or finish
        finally:
            resp.close()
        return Reply("".join(parts), usage.get("prompt_tokens"), usage.get("completion_tokens"), finish)


# ------------------------------------------------------------------------------------- local
class _StreamHooks:
    """``RowHooks`` for one row: every new piece of text goes to ``on_text`` as it is made."""

    def __init__(self, on_text: OnText):
        self.on_text_cb = on_text

    def wants_text(self, i: int) -> bool:
        return True

    def on_text(self, i: int, delta: str) -> None:
        self.on_text_cb(delta)

    def cancelled(self, i: int) -> bool:
        return False


class LocalBackend:
    """``GenerationEngine`` in this process; ``lora`` is a peft adapter directory to answer with."""

    ADAPTER = "lora"

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "float32", lora: str | None = None):
        from knowlm_ray.generation.engine import GenerationEngine

        self.engine = GenerationEngine(
            model_dir, device=device, dtype=dtype, loras={self.ADAPTER: lora} if lora else None
        )
        self.adapter = self.ADAPTER if lora else None
        self.context = self.engine.max_context

    def prompt_tokens(self, messages: Messages) -> int:
        return len(self.engine.tokenizer(render_prompt(messages), add_special_tokens=True)["input_ids"])

    def complete(self, messages: Messages, params: GenerationParams, on_text: OnText) -> Reply:
        from knowlm_ray.generation.errors import RequestError

        try:
            item = self.engine.prepare_prompt(render_prompt(messages), params, adapter=self.adapter)
        except RequestError as exc:
            overflow = exc.code == CONTEXT_LENGTH_EXCEEDED
            raise (ContextOverflow if overflow else ChatError)(str(exc)) from None
        (res,) = self.engine.generate_prepared([item], _StreamHooks(on_text))
        return Reply(res.text, res.num_prompt_tokens, res.num_output_tokens, res.finish_reason)


# ----------------------------------------------------------------------------------- session
@dataclass
class ChatSession:
    """The conversation so far: a system prompt and (user, assistant) exchanges, oldest first."""

    backend: Backend
    params: GenerationParams
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def messages(self, user: str, turns: list[tuple[str, str]] | None = None) -> Messages:
        out: Messages = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.turns if turns is None else turns:
            out += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        return out + [{"role": "user", "content": user}]

    def _fits(self, messages: Messages) -> bool:
        """Room for the prompt and a whole answer, when this side knows the context."""
        n = self.backend.prompt_tokens(messages)
        return n is None or self.backend.context is None or n + self.params.max_tokens <= self.backend.context

    def ask(
        self,
        user: str,
        on_text: OnText,
        notify: Callable[[str], None],
        on_prompt: Callable[[Messages], None] | None = None,
    ) -> Reply:
        """Answer ``user`` in the context of the history; the exchange joins the history on success."""
        turns = list(self.turns)
        while turns and not self._fits(self.messages(user, turns)):
            turns = self._drop_oldest(turns, notify)
        while True:
            messages = self.messages(user, turns)
            if on_prompt is not None:
                on_prompt(messages)
            try:
                reply = self.backend.complete(messages, self.params, on_text)
                break
            except ContextOverflow:
                if not turns:
                    raise
                turns = self._drop_oldest(turns, notify)
        self.turns = turns + [(user, reply.text)]
        return reply

    def _drop_oldest(self, turns: list[tuple[str, str]], notify: Callable[[str], None]) -> list[tuple[str, str]]:
        ctx = f" of {self.backend.context} tokens" if self.backend.context else ""
        notify(f"(history too long for the model's context{ctx}: dropped the oldest exchange; {len(turns) - 1} left)")
        return turns[1:]

    def reset(self) -> None:
        self.turns.clear()


# -------------------------------------------------------------------------------------- REPL
def _read(stdin: TextIO, interactive: bool) -> str | None:
    """One line of input; None at end of input."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = stdin.readline()
    return None if line == "" else line


def run_repl(
    session: ChatSession,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
    verbose: bool = False,
    show_prompt: bool = False,
) -> int:
    """Read lines until /exit, EOF or Ctrl-C; exit status 1 if a turn failed (0 otherwise).

    Answers stream to ``stdout`` (nothing else goes there when input is not a terminal, so a
    script can read answers one per turn); notes, errors and ``--verbose`` counts go to ``stderr``.
    """
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"knowlm chat — {HELP}", file=stderr)

    def note(msg: str) -> None:
        print(msg, file=stderr, flush=True)

    def write(delta: str) -> None:
        stdout.write(delta)
        stdout.flush()

    def shown(messages: Messages) -> None:
        note("----- prompt -----\n" + render_prompt(messages) + "\n------------------")

    failed = False
    while True:
        try:
            line = _read(stdin, interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave
            print(file=stderr)
            break
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd = text.split()[0].lower()
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                note("(history cleared)")
            elif cmd == "/history":
                for u, a in session.turns:
                    note(f"you> {u}\nbot> {a}")
                note(f"({len(session.turns)} exchanges)")
            elif cmd == "/help":
                note(HELP)
            else:
                note(f"unknown command {cmd!r}; {HELP}")
            continue
        if interactive:
            write("bot> ")
        try:
            reply = session.ask(text, write, note, shown if show_prompt else None)
        except KeyboardInterrupt:  # Ctrl-C during an answer: drop that answer, keep chatting
            write("\n")
            note("(interrupted; this exchange is not kept)")
            continue
        except (ServerError, ChatError) as exc:
            write("\n")
            note(f"error: {exc}")
            failed = True
            continue
        write("\n")
        if verbose:
            note(
                f"[prompt_tokens={reply.prompt_tokens} completion_tokens={reply.completion_tokens} "
                f"finish={reply.finish_reason} history={len(session.turns)}]"
            )
    return 1 if failed else 0
