"""Serve test helpers: plain transformers/peft reference generation to compare the server against,
and two small LoRA adapters (random, non-zero B) for multi-adapter tests."""
from __future__ import annotations

import pytest


class Reference:
    """What ``model.generate`` gives for one prompt, with nothing of ours in between.

    With ``adapter_dir`` the model is ``PeftModel.from_pretrained(base, adapter_dir)``.
    """

    def __init__(self, model_dir, adapter_dir=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
        self.model = model.eval()

    def raw(self, prompt: str, max_tokens: int = 128, num_beams: int = 1,
            repetition_penalty: float = 1.0) -> tuple[str, int]:
        import torch

        enc = self.tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, num_beams=num_beams,
                                      repetition_penalty=repetition_penalty,
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.unk_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        if self.tok.eos_token_id in new:
            new = new[:new.index(self.tok.eos_token_id) + 1]
        return self.tok.decode(new, skip_special_tokens=True), len(new)

    def __call__(self, instruction: str, input: str = "", max_tokens: int = 128, num_beams: int = 1,
                 repetition_penalty: float = 1.0) -> tuple[str, int]:
        from knowlm_ray.instruct.alpaca import build_prompt

        return self.raw(build_prompt(instruction, input), max_tokens, num_beams, repetition_penalty)


@pytest.fixture(scope="session")
def reference(tiny_model) -> Reference:
    return Reference(tiny_model)


@pytest.fixture(scope="session")
def reference_cls() -> type[Reference]:
    return Reference


def make_adapter(model_dir, out_dir, seed: int):
    """A peft LoRA adapter on q/v with random A *and* B (init_lora_weights=False), scale 4."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def lora_dirs(tiny_model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("loras")
    return {"ie": make_adapter(tiny_model, base / "ie", 1), "other": make_adapter(tiny_model, base / "other", 2)}
