"""Request and response bodies: KnowLM's `/generate` and the OpenAI-compatible `/v1/*` routes.

pydantic, strict types, no extra keys: a misspelt or unsupported field is a 4xx naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from knowlm_ray.generation.chat import ChatMessage
from knowlm_ray.generation.params import CHAT_DEFAULT_MAX_TOKENS, GenerationParams

# Strict: a string "0.5" is not a temperature and `true` is not a token count.
_STRICT = ConfigDict(extra="forbid", strict=True)


class GenerateResponse(BaseModel):
    generated_text: str
    num_output_tokens_cf: int  # vLLM server's name, kept for KnowLM clients; counts EOS if produced
    error: None = None


# 4xx (also 404 for an unknown model, as OpenAI) are invalid_request_error, except 401.
ErrorType = Literal[
    "invalid_request_error", "authentication_error", "overloaded_error", "timeout_error", "server_error"
]


class ErrorDetail(BaseModel):
    message: str
    type: ErrorType = "invalid_request_error"
    code: str | None = None  # absent from the body when the error has none


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    err = {"message": message, "type": type}
    if code is not None:
        err["code"] = code
    return {"error": err}


# ------------------------------------------------------------------------------ OpenAI-compatible
class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """OpenAI structured outputs' ``json_schema`` object."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``{"type": "text"}`` (free), ``{"type": "json_object"}`` (any JSON
    object) or ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``: the answer
    is decoded constrained (``knowlm_ray.generation.constraints``) and stops at its closing brace;
    a schema keyword the closer cannot close within the token budget is a 400 naming it."""

    model_config = _STRICT

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self):
        from knowlm_ray.generation.constraints import ConstraintSpec

        if self.type == "text":
            return None
        if self.type == "json_object":
            return ConstraintSpec("json_object")
        if self.json_schema is None:
            raise ValueError("response_format.json_schema: required when type is json_schema")
        return ConstraintSpec("json_schema", schema=self.json_schema.json_schema or {"type": "object"})


class _OpenAISampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions.

    OpenAI's defaults (temperature 1.0: sampling), so a stock client behaves as with OpenAI; send
    ``temperature: 0`` for greedy, reproducible answers. ``presence_penalty`` and
    ``frequency_penalty`` are OpenAI's (-2..2, over the tokens generated so far). ``top_k``
    (0 or -1 = off) and ``repetition_penalty`` are extensions (vLLM has them too). Fields OpenAI
    defines that this server cannot honour are accepted only at their neutral value (e.g.
    ``logprobs: null``) and are a 400 otherwise; an unknown field is a 422.
    """

    model_config = _STRICT

    model: str | None = None  # base model id, a configured adapter's name, or "base:adapter"
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None  # OpenAI structured outputs: constrained decoding
    # accepted for compatibility, only at their neutral values (checked in `unsupported`)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None  # ignored

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        # how many and how long: the replica's max_stop_strings / max_stop_chars (serve/bounds.py)
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @property
    def stop_list(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def constraint(self):
        """The ``ConstraintSpec`` of ``response_format`` (None: free text)."""
        return self.response_format.constraint() if self.response_format is not None else None

    def generation_params(self, max_tokens: int) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=max_tokens,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def unsupported(self) -> str | None:
        """A message naming the first field set to something this server cannot do, or None."""
        if self.logit_bias:
            return "logit_bias is not supported"
        if self.seed is not None and self.temperature > 0:
            return "seed is not supported with sampling (temperature > 0); use temperature 0 for reproducible output"
        if self.stream_options is not None and not self.stream:
            return "stream_options is only allowed with stream: true"
        if self.response_format is not None and self.response_format.type == "json_schema":
            if self.response_format.json_schema is None:
                return "response_format.json_schema: required when type is json_schema"
        return None


class CompletionRequest(_OpenAISampling):
    """``POST /v1/completions``: the raw prompt goes to the model as is (no template)."""

    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts or len(prompts) > 32:
            raise ValueError("give 1 to 32 prompts")
        if any(not p for p in prompts):
            raise ValueError("prompts must not be empty")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo is not supported"
        if self.logprobs is not None:
            return "logprobs is not supported"
        if self.suffix is not None:
            return "suffix is not supported"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of is not supported"
        return super().unsupported()


class ChatCompletionRequest(_OpenAISampling):
    """``POST /v1/chat/completions``: messages are rendered into KnowLM's alpaca prompt
    (see ``knowlm_ray.generation.chat.render_chat``)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name; wins if both
    logprobs: bool = False

    def unsupported(self) -> str | None:
        if self.logprobs:
            return "logprobs is not supported"
        return super().unsupported()

    @property
    def max_new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or CHAT_DEFAULT_MAX_TOKENS
