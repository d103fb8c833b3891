"""Serve test helpers: a plain-transformers reference generation to compare the server against."""
from __future__ import annotations

import pytest


class Reference:
    """What ``model.generate`` gives for one alpaca prompt, with nothing of ours in between."""

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def __call__(self, instruction: str, input: str = "", max_tokens: int = 128, num_beams: int = 1,
                 repetition_penalty: float = 1.0) -> tuple[str, int]:
        import torch

        from knowlm_ray.instruct.alpaca import build_prompt

        enc = self.tok(build_prompt(instruction, input), return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, num_beams=num_beams,
                                      repetition_penalty=repetition_penalty,
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.unk_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        if self.tok.eos_token_id in new:
            new = new[:new.index(self.tok.eos_token_id) + 1]
        return self.tok.decode(new, skip_special_tokens=True), len(new)


@pytest.fixture(scope="session")
def reference(tiny_model) -> Reference:
    return Reference(tiny_model)
