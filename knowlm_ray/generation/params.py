"""What the engine is asked: decoding parameters and an alpaca request.

pydantic, strict types, no extra keys: a misspelt or unsupported field is an error naming the
field. ``GenerateRequest`` is also the body of the server's ``/generate`` route.
"""

from __future__ import annotations

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
    # Which weights answer: the base model's id or a configured adapter's name (as the OpenAI
    # `model` field); `adapter` names an adapter only. Omitted: the base model.
    model: str | None = None
    adapter: str | None = None

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instruction must not be blank")
        return v


# Chat has no OpenAI default (it runs to the context's end); on CPU that could be minutes, so
# the same 128 as /generate. Ask for more with max_tokens.
CHAT_DEFAULT_MAX_TOKENS = 128
