"""A transformers generation engine with request batching; plain Python, no Ray.

The Serve deployment, tests and the batch-extraction job all use it the same way:
``engine.prepare(request)`` checks and tokenises one request (raising ``RequestError`` for
something the caller got wrong), ``engine.generate_prepared(items)`` runs them in as few
left-padded ``generate`` calls as their parameters allow; ``generate_batch`` does both.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from knowlm_ray.instruct.alpaca import build_prompt
from knowlm_ray.serve.schemas import GenerateRequest, GenerationParams


class RequestError(ValueError):
    """A request the model cannot serve (e.g. longer than its context): the client's fault (400)."""


@dataclass(frozen=True)
class Prepared:
    input_ids: tuple[int, ...]
    params: GenerationParams
    max_new_tokens: int  # max_tokens, cut to the room the context leaves after the prompt


@dataclass(frozen=True)
class GenerationResult:
    text: str
    num_output_tokens: int  # generated tokens, EOS included when produced
    num_prompt_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"


def _group_key(p: Prepared) -> tuple:
    """Requests sharing this key go into one ``generate`` call.

    Greedy and sampled rows are cut to their own max_new_tokens afterwards, which is what a
    row of its own would have produced; beam search ranks whole hypotheses, so its length
    budget must match exactly.
    """
    q = p.params
    sampling = q.sampling
    return (sampling, q.temperature if sampling else None, q.top_p if sampling else None,
            q.top_k if sampling else None, q.num_beams, q.repetition_penalty,
            p.max_new_tokens if q.num_beams > 1 else None)


class GenerationEngine:
    """An HF causal LM (fp32 on CPU by default) answering KnowLM alpaca requests."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory not found or has no config.json: {path}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_dir = path
        self.device = torch.device(device)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        tok.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if tok.pad_token is None:  # LLaMA ships none; pad positions are masked out anyway
            tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer in {path} has no EOS token; generation could not stop")
        self.tokenizer = tok
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=False).to(self.device).eval()
        self.max_context = self._context_length()
        self._lock = threading.Lock()  # one generate at a time per engine: torch threads are shared

    def _context_length(self) -> int:
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048  # LLaMA-1's context, for configs that do not say

    # -- one request -------------------------------------------------------------------------
    def prompt_for(self, request: GenerateRequest) -> str:
        return build_prompt(request.instruction, request.input)

    def prepare(self, request: GenerateRequest) -> Prepared:
        """Tokenise and check one request; raises RequestError naming what is wrong."""
        ids = self.tokenizer(self.prompt_for(request), add_special_tokens=True)["input_ids"]
        return self.prepare_ids(ids, request.parameters)

    def prepare_ids(self, ids: Sequence[int], params: GenerationParams) -> Prepared:
        if params.max_tokens > self.max_context:
            raise RequestError(f"parameters.max_tokens: {params.max_tokens} exceeds the model's "
                               f"context of {self.max_context} tokens")
        room = self.max_context - len(ids)
        if room < 1:
            raise RequestError(f"prompt is {len(ids)} tokens; the model's context is "
                               f"{self.max_context} tokens (instruction + input too long)")
        return Prepared(tuple(ids), params, min(params.max_tokens, room))

    # -- batches -----------------------------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerationResult]:
        return self.generate_prepared([self.prepare(r) for r in requests])

    def generate_prepared(self, items: Sequence[Prepared]) -> list[GenerationResult]:
        """Results in input order; one ``generate`` call per group of equal parameters."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(_group_key(item), []).append(i)
        results: list[GenerationResult | None] = [None] * len(items)
        with self._lock:
            for group in groups.values():
                for idx in self._fit_context(group, items):
                    for i, res in zip(idx, self._generate_group([items[i] for i in idx])):
                        results[i] = res
        return results  # type: ignore[return-value]

    def _fit_context(self, group: list[int], items: Sequence[Prepared]) -> list[list[int]]:
        """Split a group so the padded prompt plus the longest budget stays within the context."""
        chunks: list[list[int]] = []
        longest = budget = 0
        for i in sorted(group, key=lambda i: len(items[i].input_ids)):  # like lengths together
            n, m = len(items[i].input_ids), items[i].max_new_tokens
            if chunks and max(longest, n) + max(budget, m) <= self.max_context:
                chunks[-1].append(i)
                longest, budget = max(longest, n), max(budget, m)
            else:
                chunks.append([i])
                longest, budget = n, m
        return chunks

    def _generate_group(self, items: list[Prepared]) -> list[GenerationResult]:
        import torch

        tok = self.tokenizer
        batch = tok.pad({"input_ids": [list(p.input_ids) for p in items]}, padding=True,
                        return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, generation_config=self._generation_config(items))
        new_tokens = out[:, batch["input_ids"].shape[1]:].tolist()
        return [self._result(row, p) for row, p in zip(new_tokens, items)]

    def _generation_config(self, items: list[Prepared]):
        q = items[0].params
        cfg = copy.deepcopy(self.model.generation_config)
        # Every decoding field is set here so a generation_config.json shipped with the model
        # (e.g. do_sample/temperature from a chat model) cannot change what the request asked.
        sampling = q.sampling
        cfg.update(
            do_sample=sampling, num_beams=q.num_beams, num_return_sequences=1,
            # Sampling knobs are unset for greedy/beam decoding (transformers warns otherwise).
            temperature=q.temperature if sampling else None,
            top_p=q.top_p if sampling else None,
            top_k=q.top_k if sampling else None,  # 0 = off, said explicitly: the default is 50
            repetition_penalty=q.repetition_penalty,
            max_new_tokens=max(p.max_new_tokens for p in items), max_length=None, min_new_tokens=None,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        return cfg

    def _result(self, row: list[int], p: Prepared) -> GenerationResult:
        row = row[:p.max_new_tokens]
        eos = self.tokenizer.eos_token_id
        if eos in row:
            row = row[:row.index(eos) + 1]
            finish = "stop"
        else:
            finish = "length"
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        return GenerationResult(text=text, num_output_tokens=len(row),
                                num_prompt_tokens=len(p.input_ids), finish_reason=finish)

    def describe(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "max_context": self.max_context,
                "dtype": str(self.model.dtype), "device": str(self.device)}
