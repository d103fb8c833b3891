"""The options of the Serve application (``AppArgs``): a config file's ``applications[].args``,
``knowlm serve --set KEY=VALUE``, ``knowlm config show serve``. Ray-free, so ``knowlm serve
--help`` and config checks need not import Ray Serve."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from knowlm_ray.config import Strict
from knowlm_ray.ie.formats import NAMES as PROMPT_FORMATS
from knowlm_ray.ie.formats import check_format_name

# Measured on 2 cores: 0.5 CPU per replica leaves room for the proxy and a
# second replica; scale on queue depth, back down after a quiet 30 s.
DEFAULT_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 4,
    "upscale_delay_s": 2,
    "downscale_delay_s": 30,
}
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)$")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
LIMIT_KEYS = (
    "max_body_bytes",
    "max_json_depth",
    "max_rows_per_request",
    "max_extract_chars",
    "max_extract_labels",
    "max_stop_strings",
    "max_stop_chars",
)


class LoraEntry(Strict):
    """One adapter of ``loras`` given as an object: its directory and the prompt format it was
    trained in (``loras: {name: dir}`` still works: the model's ``prompt_format`` then)."""

    path: str = Field(description="peft adapter directory; a relative path resolves against the working directory.")
    prompt_format: str | None = Field(
        None, description=f"The adapter's prompt format ({', '.join(PROMPT_FORMATS)}); null: the model's."
    )

    @field_validator("prompt_format")
    @classmethod
    def _format(cls, v):
        return v if v is None else check_format_name(v)


class AppArgs(Strict):
    """``args`` of the Serve application (config file ``applications[].args`` or ``launch``).

    Engine: ``dtype`` float32 (default) | float16 (GPU only: an error on CPU, by choice) |
    bfloat16; ``quantization`` none | int8 (bitsandbytes 8-bit on CUDA — the ``quant`` extra —
    and torch dynamic int8 on CPU); ``device_map`` + ``max_memory`` spread one replica over
    ``num_gpus`` GPUs (KnowLM's ``--multi_gpu --allocate``). Overload: a replica answers 503 when
    ``max_waiting_requests`` already wait for a batch; Serve answers 503 itself when
    ``max_queued_requests`` wait for a replica (both with ``Retry-After``).
    """

    model: str = Field(
        description="HF model directory; a relative path resolves against the current working directory."
    )
    model_id: str | None = Field(
        None,
        description="Name reported by /healthz and /v1/models (and chosen with "
        "a request's model); null: the directory's name.",
    )
    loras: dict[str, str | LoraEntry] = Field(
        default_factory=dict,
        description="Adapter name -> peft adapter directory, or -> {path, prompt_format}; a request selects "
        'one with "model": NAME.',
    )
    edits: list[str] = Field(
        default_factory=list,
        description="Knowledge edits (knowlm edit apply's output dirs) applied in this order to the model "
        "when a replica loads it; each is checked against the weights it was made on.",
    )
    prompt_format: str = Field(
        "alpaca",
        description=f"How /extract asks the model ({', '.join(PROMPT_FORMATS)}): alpaca (this project's IE "
        "wording), oneke (zjunlp/OneKE), zhixi (knowlm-13b-zhixi / -ie), chat (the tokenizer's chat "
        "template); a request's prompt_format overrides it.",
    )
    max_loras_per_replica: int = Field(4, ge=1, description="LRU bound on the adapters held in one replica.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the replica has a GPU.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Weights' dtype; float16 is GPU only (an error on CPU, by choice)."
    )
    quantization: Literal["none", "int8"] = Field(
        "none", description="int8: bitsandbytes 8-bit on CUDA (the quant extra), torch dynamic int8 on CPU."
    )
    device_map: str | dict[str, int | str] | None = Field(
        None,
        description="Spread one replica over num_gpus GPUs: auto, balanced, balanced_low_0, sequential or "
        "a module -> device dict (KnowLM's --multi_gpu).",
    )
    max_memory: dict[int | str, int | str] | None = Field(
        None,
        description="With device_map: memory cap per device, e.g. {0: 20GiB, 1: 20GiB, cpu: 30GiB} "
        "(KnowLM's --allocate).",
    )
    trust_remote_code: bool = Field(
        False,
        strict=True,
        description="Run Python shipped with the model directory: only for sources you trust (a strict bool).",
    )
    num_threads: int | None = Field(None, ge=1, description="torch threads per replica; null: Ray's OMP_NUM_THREADS.")
    batching: Literal["continuous", "dynamic"] = Field(
        "continuous",
        description="continuous: requests join the running batch at the next decode step, each "
        "row with its own parameters (beam search runs apart); dynamic: @serve.batch collects up to "
        "max_batch_size requests and runs them to the end as one generate per parameter group.",
    )
    max_batch_size: int = Field(16, ge=1, le=64, description="Rows decoded together (either batching).")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=1, description="dynamic only: how long a batch waits to fill.")
    max_prefill_tokens: int | None = Field(
        16,  # continuous.DEFAULT_MAX_PREFILL_TOKENS (not imported: options load without torch)
        ge=1,
        description="continuous only: prompt tokens prefilled per decode step for rows joining beside a request "
        "that is only decoding (longer prompts go in chunks), so a big job's rows never stall a small request's "
        "steps by more; a newcomer's first row is never held back. null: no limit. On a GPU a step's cost "
        "hardly grows with its tokens: raise it there.",
    )
    max_waiting_requests: int = Field(
        16, ge=1, description="Requests waiting for a batch in one replica; more get 503 + Retry-After."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Then 504; a client may ask for less with X-KnowLM-Timeout-S."
    )
    retry_after_s: float = Field(1.0, ge=0, description="The Retry-After of a 503.")
    api_key: str | None = Field(
        None, description="Bearer token clients must send; null: $KNOWLM_API_KEY, and unset there too: no auth."
    )
    num_cpus: float = Field(
        0.5,
        gt=0,
        description="CPUs per replica (a config file's deployments: entry "
        "overrides this and the deployment options below).",
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per replica.")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests one replica holds at once (Serve).")
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests waiting for a replica before Serve answers 503 itself; -1: unbounded (not advised).",
    )
    num_replicas: int | None = Field(
        None, ge=1, description="A fixed replica count (turns autoscaling off); null: autoscaling_config."
    )
    autoscaling_config: dict[str, Any] | None = Field(
        default_factory=lambda: dict(DEFAULT_AUTOSCALING), description="Serve's autoscaling_config for the deployment."
    )
    # Request bounds (serve/bounds.py): each refusal is a 4xx naming its key and value.
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest request body in bytes (1 MiB: 32 long prompts); more is a 413, refused from "
        "Content-Length before the body is read, or as a chunked body arrives.",
    )
    max_json_depth: int = Field(
        64,
        ge=2,
        le=500,
        description="Deepest JSON nesting of a body (a response_format schema needs ~2 per level); more is a 400.",
    )
    max_rows_per_request: int = Field(
        512,
        ge=1,
        description="Rows one request may make: prompts x n (/v1/completions), n (chat), text chunks x label "
        "batches (/extract: 12,000 characters with 24 labels are 128-366 rows); more is a 400.",
    )
    max_extract_chars: int = Field(
        20_000, ge=1, description="Characters of one /extract text; more is a 400 (send long texts in parts)."
    )
    max_extract_labels: int = Field(64, ge=1, description="Labels (entity types, relations, event types) per /extract.")
    max_stop_strings: int = Field(4, ge=0, le=64, description="Stop strings per request (OpenAI's 4).")
    max_stop_chars: int = Field(
        256, ge=1, le=4096, description="Characters of the longest stop string (streaming holds back one less)."
    )

    @field_validator("prompt_format")
    @classmethod
    def _prompt_format(cls, v: str) -> str:
        return check_format_name(v)

    def limits(self) -> dict[str, int]:
        """The request bounds, as ``bounds.Limits`` takes them."""
        return {k: getattr(self, k) for k in LIMIT_KEYS}

    def lora_dirs(self) -> dict[str, str]:
        """Adapter name -> directory, whichever way each entry was given."""
        return {n: e if isinstance(e, str) else e.path for n, e in self.loras.items()}

    def lora_prompt_formats(self) -> dict[str, str]:
        """Adapter name -> prompt format (the model's where the entry names none)."""
        return {
            n: (e.prompt_format if isinstance(e, LoraEntry) and e.prompt_format else self.prompt_format)
            for n, e in self.loras.items()
        }

    @field_validator("loras")
    @classmethod
    def _lora_names(cls, v: dict[str, str | LoraEntry]) -> dict[str, str | LoraEntry]:
        for name in v:
            if not _ADAPTER_NAME.match(name):
                raise ValueError(f"adapter name {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
        return v

    @field_validator("edits")
    @classmethod
    def _edit_dirs(cls, v: list[str]) -> list[str]:
        from pathlib import Path

        out = []
        for d in v:  # absolute: replicas run in other processes
            path = Path(d).expanduser().resolve()
            if not (path / "manifest.json").is_file():
                raise ValueError(f"edits: {d} is not an edit directory (no manifest.json)")
            out.append(str(path))
        return out

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, v):
        if isinstance(v, str) and v not in DEVICE_MAPS:
            raise ValueError(f"device_map must be one of {', '.join(DEVICE_MAPS)} or a module->device dict")
        return v

    @field_validator("max_memory")
    @classmethod
    def _max_memory(cls, v):
        if v is None:
            return v
        out: dict[int | str, int | str] = {}
        for key, size in v.items():
            if isinstance(key, str) and key.isdigit():
                key = int(key)
            if not (isinstance(key, int) and key >= 0) and key not in ("cpu", "disk"):
                raise ValueError(f"max_memory key {key!r}: a GPU index (0, 1, ...), 'cpu' or 'disk'")
            if isinstance(size, int):
                if size <= 0:
                    raise ValueError(f"max_memory[{key!r}]: bytes must be > 0")
            elif not _MEMORY.match(size.strip()):
                raise ValueError(f"max_memory[{key!r}] = {size!r}: write a size like '20GiB' or '512MiB'")
            out[key] = size
        return out

    @model_validator(mode="after")
    def _consistent(self):
        if self.model_id is not None and self.model_id in self.loras:
            raise ValueError(f"loras: adapter name {self.model_id!r} is the base model's id")
        gpus = [k for k in (self.max_memory or {}) if isinstance(k, int)]
        if self.max_memory and self.device_map is None:
            raise ValueError("max_memory needs device_map (e.g. device_map: auto)")
        if gpus and max(gpus) + 1 > self.num_gpus:
            raise ValueError(
                f"max_memory names GPU {max(gpus)} but num_gpus is {self.num_gpus:g} "
                "(a replica sees GPUs 0..num_gpus-1)"
            )
        on_cpu = self.device == "cpu" or (self.device == "auto" and self.num_gpus == 0)
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device cuda needs num_gpus >= 1 (Ray gives a replica no GPU otherwise)")
        if on_cpu and self.dtype == "float16":
            raise ValueError("dtype float16 needs a GPU (num_gpus >= 1); on CPU use float32 or bfloat16")
        if self.edits and self.quantization != "none":
            raise ValueError("edits are added to full-precision weights: serve them without quantization")
        if on_cpu and self.quantization == "int8":
            if self.dtype != "float32":
                raise ValueError("quantization int8 on CPU (torch dynamic int8) computes in float32: set dtype float32")
            if self.loras:
                raise ValueError(
                    "LoRA adapters cannot sit on torch's dynamic int8 layers (CPU int8): "
                    "merge them or serve without quantization"
                )
        return self
