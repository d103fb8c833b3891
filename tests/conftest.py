"""Shared fixtures: quiet, offline environment; one tiny model and one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from knowlm_ray.runtime import set_default_env

set_default_env()
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny LLaMA + tokenizer trained on data/sample (built once per test session)."""
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    out = tmp_path_factory.mktemp("tiny") / "model"
    corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
    if not corpus:  # only while data/sample is being written: a small stand-in corpus
        stand_in = out.parent / "corpus.txt"
        stand_in.write_text(
            "\n".join(
                f"浙江大学位于杭州市，第{i}届学生在西湖边读书。The river Thames flows through London, "
                f"and report {i} was published in 2023 by Dr. Smith."
                for i in range(300)
            ),
            encoding="utf-8",
        )
        corpus = [stand_in]
    return build_tiny(out, corpus, TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (start 2.5 s, shutdown 1.8 s: never per test)."""
    import ray

    from knowlm_ray.runtime import init_ray

    init_ray(num_cpus=2, object_store_mb=512)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


# ---------------------------------------------------------------------- generation and serve
# Plain transformers/peft reference generation to compare the engine and the server against,
# and two small LoRA adapters (random, non-zero B) for multi-adapter tests.
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

    def raw(
        self, prompt: str, max_tokens: int = 128, num_beams: int = 1, repetition_penalty: float = 1.0
    ) -> tuple[str, int]:
        import torch

        enc = self.tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                num_beams=num_beams,
                repetition_penalty=repetition_penalty,
                eos_token_id=self.tok.eos_token_id,
                pad_token_id=self.tok.unk_token_id,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        if self.tok.eos_token_id in new:
            new = new[: new.index(self.tok.eos_token_id) + 1]
        return self.tok.decode(new, skip_special_tokens=True), len(new)

    def __call__(
        self,
        instruction: str,
        input: str = "",
        max_tokens: int = 128,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
    ) -> tuple[str, int]:
        from knowlm_ray.alpaca import build_prompt

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
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def lora_dirs(tiny_model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("loras")
    return {"ie": make_adapter(tiny_model, base / "ie", 1), "other": make_adapter(tiny_model, base / "other", 2)}
