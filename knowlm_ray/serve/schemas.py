"""Request and response bodies of the KnowLM `/generate` API (pydantic; strict, no extra keys)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Strict: a string "0.5" is not a temperature and `true` is not a token count.
_STRICT = ConfigDict(extra="forbid", strict=True)


class GenerationParams(BaseModel):
    """Decoding parameters; every field is optional.

    Defaults are chosen for a CPU server and for reproducible answers, not copied from one source:

    - ``temperature`` 0.0 → greedy decoding (deterministic). Sampling happens only when
      temperature > 0 (and ``do_sample`` is not false). KnowLM's generate_lora.py uses 0.2 but
      never sets do_sample, so its temperature is inert there too.
    - ``top_p`` 1.0 and ``top_k`` 0 (0 = off): no truncation unless asked; used only when sampling.
    - ``num_beams`` 1. KnowLM's scripts use 2–4 beams; beams multiply CPU time, so opt in.
    - ``max_tokens`` 128 new tokens (KnowLM: 512, vLLM's server: 16). At most the model's context;
      a prompt that leaves less room than ``max_tokens`` is answered up to the context's end.
    - ``repetition_penalty`` 1.0 = none (KnowLM recommends 1.3 for ZhiXi-13B; ask for it).

    Generation always stops at the tokenizer's end-of-sequence token.
    """

    model_config = _STRICT

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    num_beams: int = Field(1, ge=1, le=8)
    max_tokens: int = Field(128, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    do_sample: bool | None = Field(None, description="false forces greedy even with temperature > 0")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0 and self.do_sample is not False


class GenerateRequest(BaseModel):
    """KnowLM's body: the alpaca prompt is built from ``instruction`` and ``input`` server-side."""

    model_config = _STRICT

    instruction: str = Field(min_length=1)
    input: str = ""
    parameters: GenerationParams = Field(default_factory=GenerationParams)

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instruction must not be blank")
        return v


class GenerateResponse(BaseModel):
    generated_text: str
    num_output_tokens_cf: int  # vLLM server's name, kept for KnowLM clients; counts EOS if produced
    error: None = None


class ErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"] = "invalid_request_error"


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type}}
