"""What the engine is asked: decoding parameters and an alpaca request.

pydantic, strict types, no extra keys: a misspelt or unsupported field is an error naming the
field. ``GenerateRequest`` is also the body of the server's ``/generate`` route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Strict: a string "0.5" is not a temperature and `true` is not a token count.
_STRICT = ConfigDict(extra="forbid", strict=True)


class GenerationParams(BaseModel):
    """Decoding parameters; every field is optional.

    Defaults are chosen for a CPU server and for reproducible answers, not copied from one source:

    - ``temperature`` 0.0 → greedy decoding (deterministic). Sampling happens only when
      temperature > 0 (and ``do_sample`` is not false). KnowLM's generate_lora.py uses 0.2 but
      never sets do_sample, so its temperature is inert there too.
    - ``top_p`` 1.0 and ``top_k`` 0 (0 = off; -1, vLLM's and KnowLM's "off", is read as 0): no
      truncation unless asked; used only when sampling.
    - ``num_beams`` 1. KnowLM's scripts use 2–4 beams; beams multiply CPU time, so opt in.
    - ``max_tokens`` 128 new tokens (KnowLM: 512, vLLM's server: 16). At most the model's context;
      a prompt that leaves less room than ``max_tokens`` is answered up to the context's end.
    - ``repetition_penalty`` 1.0 = none (KnowLM recommends 1.3 for ZhiXi-13B; ask for it).
    - ``presence_penalty`` and ``frequency_penalty`` 0.0 = none: OpenAI's (and vLLM's) additive
      penalties over the tokens generated so far (``knowlm_ray.generation.penalties``).

    KnowLM's ``/generate`` body has other defaults when a key is absent (``GenerateRequest``).

    Generation always stops at the tokenizer's end-of-sequence token.
    """

    model_config = _STRICT

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 = off")
    num_beams: int = Field(1, ge=1, le=8)
    max_tokens: int = Field(128, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    do_sample: bool | None = Field(None, description="false forces greedy even with temperature > 0")

    @field_validator("top_k")
    @classmethod
    def _top_k_off(cls, v: int) -> int:
        return max(v, 0)  # -1 and 0 both mean off; the decoders know only 0

    @property
    def sampling(self) -> bool:
        return self.temperature > 0 and self.do_sample is not False


# What KnowLM's server (inference/launch_vllm.py over vLLM 0.1) uses for a key absent from
# `parameters`: sampling at temperature 1.0, no truncation, 16 new tokens, no penalties.
KNOWLM_GENERATE_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "max_tokens": 16,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def knowlm_parameters() -> GenerationParams:
    """``/generate``'s parameters when the body has none: KnowLM's defaults."""
    return GenerationParams(**KNOWLM_GENERATE_DEFAULTS)


class GenerateRequest(BaseModel):
    """KnowLM's body: the alpaca prompt is built from ``instruction`` and ``input`` server-side.

    ``parameters`` is read as KnowLM's server reads it: a key it leaves out takes
    ``KNOWLM_GENERATE_DEFAULTS`` (not ``GenerationParams``' own defaults), and a key this server
    does not know is ignored (KnowLM ignores them too). The known keys are still strict: a
    wrong type or an out-of-range value is an error naming it. A ``GenerationParams`` object
    (from code, not JSON) is taken as it is.
    """

    model_config = _STRICT

    instruction: str = Field(min_length=1)
    input: str = ""
    parameters: GenerationParams = Field(default_factory=knowlm_parameters)
    # Which weights answer: the base model's id or a configured adapter's name (as the OpenAI
    # `model` field); `adapter` names an adapter only. Omitted: the base model.
    model: str | None = None
    adapter: str | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _knowlm_parameters(cls, v: Any) -> Any:
        if isinstance(v, dict):
            known = {k: x for k, x in v.items() if k in GenerationParams.model_fields}
            return {**KNOWLM_GENERATE_DEFAULTS, **known}
        return v

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instruction must not be blank")
        return v


# Chat has no OpenAI default (it runs to the context's end); on CPU that could be minutes, so
# GenerationParams' 128. Ask for more with max_tokens.
CHAT_DEFAULT_MAX_TOKENS = 128
