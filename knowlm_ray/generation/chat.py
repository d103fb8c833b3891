"""Chat messages → KnowLM's alpaca prompt (``render_chat``); no Ray, no HTTP.

ZhiXi is an alpaca-style instruction model with no chat template, so a conversation becomes
alpaca blocks:

- ``system`` (and ``developer``) messages, joined by newlines, are prepended to the first user
  message: ``instruction = system + "\\n\\n" + user``;
- each earlier user → assistant exchange is rendered as its alpaca prompt followed by the
  assistant's answer and a blank line (the way Chinese-LLaMA-Alpaca chained turns);
- the last message must be from the user; its alpaca prompt (no ``### Input`` section) ends the
  text, and the model writes the response.

A single ``{"role": "user", "content": I}`` therefore gives exactly ``/generate``'s prompt for
``{"instruction": I}``. Consecutive user messages are joined with a blank line. The server's
``/v1/chat/completions`` and ``knowlm chat`` (both backends) render through this one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from knowlm_ray.alpaca import build_prompt
from knowlm_ray.generation.errors import RequestError

_STRICT = ConfigDict(extra="forbid", strict=True)


class ContentPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


def render_chat(messages: Sequence[ChatMessage]) -> str:
    system = "\n".join(m.text for m in messages if m.role in ("system", "developer") and m.text)
    turns: list[list[str | None]] = []  # [user, assistant or None]
    for m in messages:
        if m.role in ("system", "developer"):
            continue
        if m.role == "user":
            if turns and turns[-1][1] is None:
                turns[-1][0] = f"{turns[-1][0]}\n\n{m.text}"
            else:
                turns.append([m.text, None])
        else:
            if not turns:
                raise RequestError("messages: an assistant message comes before any user message")
            turns[-1][1] = m.text if turns[-1][1] is None else f"{turns[-1][1]}\n\n{m.text}"
    if not turns or turns[-1][1] is not None:
        raise RequestError("messages: the last message must be from the user")
    if not (turns[-1][0] or "").strip():
        raise RequestError("messages: the last user message is empty")
    if system:
        turns[0][0] = f"{system}\n\n{turns[0][0]}"
    history = "".join(build_prompt(u or "") + (a or "") + "\n\n" for u, a in turns[:-1])
    return history + build_prompt(turns[-1][0] or "")
