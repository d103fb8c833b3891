"""OpenAI-compatible pieces without Ray: model names, response and SSE bodies.

Chat messages become KnowLM's alpaca prompt in ``knowlm_ray.generation.chat.render_chat``;
``/v1/completions`` sends its prompt to the model as it is (no template), as OpenAI does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from knowlm_ray.generation.engine import GenerationResult
from knowlm_ray.generation.errors import UnknownModelError


def resolve_model(requested: str | None, base_id: str, adapters: Iterable[str]) -> str | None:
    """The adapter a ``model`` field selects (None: the base model); UnknownModelError otherwise.

    Accepted: omitted, the base id, an adapter name, or ``"<base id>:<adapter>"`` (Ray Serve
    LLM's spelling). Only names, never paths: adapters come from the server's configuration.
    """
    adapters = set(adapters)
    if requested is None or requested == "" or requested == base_id:
        return None
    if requested in adapters:
        return requested
    base, sep, name = requested.partition(":")
    if sep and base == base_id and name in adapters:
        return name
    available = ", ".join([base_id, *sorted(adapters)])
    raise UnknownModelError(f"model {requested!r} not found; available: {available}")


def models_list(base_id: str, adapters: Iterable[str], created: int) -> dict[str, Any]:
    data = [
        {
            "id": base_id,
            "object": "model",
            "created": created,
            "owned_by": "knowlm-ray",
            "root": base_id,
            "parent": None,
        }
    ]
    data += [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "knowlm-ray",
            "root": base_id,
            "parent": base_id,
        }
        for name in sorted(adapters)
    ]
    return {"object": "list", "data": data}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(results: Sequence[GenerationResult], n: int) -> dict[str, int]:
    """Prompt tokens once per prompt (not per choice), completion tokens over all choices."""
    prompt = sum(r.num_prompt_tokens for r in results[::n])
    completion = sum(r.num_output_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(r: GenerationResult) -> str:
    return "stop" if r.finish_reason == "stop" else "length"


def completion_body(rid: str, created: int, model: str, results: Sequence[GenerationResult], n: int) -> dict[str, Any]:
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": finish_reason(r)} for i, r in enumerate(results)
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(results, n),
    }


def chat_body(rid: str, created: int, model: str, results: Sequence[GenerationResult], n: int) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": None,
            "finish_reason": finish_reason(r),
        }
        for i, r in enumerate(results)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(results, n),
    }


def completion_chunk(
    rid: str, created: int, model: str, index: int, text: str, finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def chat_chunk(
    rid: str, created: int, model: str, index: int, delta: Mapping[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": dict(delta), "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(
    rid: str, created: int, model: str, obj: str, results: Sequence[GenerationResult], n: int
) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage(results, n)}


def sse(obj: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
