"""Perplexity of an instruction's response under a local causal LM.

The text scored is the response given the alpaca prompt (``knowlm_ray.alpaca.build_prompt``): the
model reads prompt + response + EOS, and perplexity is exp of the mean cross-entropy over the
response tokens and EOS only (the prompt is context, as in training with ``train_on_inputs:
false``). Sequences are cut to ``max_tokens`` from the left of the prompt's end, so a long
response keeps its start. One record per row of a padded batch; padding never enters the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from knowlm_ray.alpaca import build_prompt


class Scorer:
    """A model and tokenizer in one process (one per Ray Data actor)."""

    def __init__(self, model_dir: str, max_tokens: int = 512, device: str = "cpu", threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
        self.device, self.max_tokens = device, max_tokens

    def _ids(self, instruction: str, input: str, output: str) -> tuple[list[int], int]:
        prompt = self.tok(build_prompt(instruction, input), add_special_tokens=True)["input_ids"]
        answer = self.tok(output, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        answer = answer[: self.max_tokens - 1]
        prompt = prompt[-(self.max_tokens - len(answer)) :]
        return prompt + answer, len(prompt)

    def perplexity(self, views: Sequence[dict[str, str]]) -> list[float]:
        torch = self.torch
        if not views:
            return []
        seqs = [self._ids(v["instruction"], v["input"], v["output"]) for v in views]
        width = max(len(ids) for ids, _ in seqs)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, n_prompt) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, n_prompt : len(s)] = torch.tensor(s[n_prompt:])
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:].to(self.device)
        valid = target != -100
        nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        mean = nll.sum(1) / valid.sum(1).clamp(min=1)
        return [math.exp(min(float(x), 700.0)) for x in mean.cpu()]
