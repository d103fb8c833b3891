"""One real 2-worker LoRA fit (DDP over gloo) on alpaca records, with the prompt masked out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowlm_ray.alpaca import IGNORE_INDEX, build_prompt
from knowlm_ray.config import FinetuneConfig
from knowlm_ray.train import lora
from knowlm_ray.train.metrics import read_metrics

pytestmark = pytest.mark.slow
PEOPLE = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken"]


@pytest.fixture(scope="module")
def settings(tiny_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lora")
    records = [
        {"instruction": "List the people.", "input": f"{a} met {b}.", "output": f'["{a}", "{b}"]'}
        for a in PEOPLE
        for b in PEOPLE
        if a != b
    ]
    (root / "instructions.json").write_text(json.dumps(records), encoding="utf-8")
    return dict(
        model=str(tiny_model),
        data=str(root / "instructions.json"),
        num_workers=2,
        deepspeed="ddp",
        micro_batch_size=4,
        grad_accum=1,
        cutoff_len=128,
        lr=5e-3,
        warmup_steps=1,
        max_steps=12,
        save_every=6,
        val_set_size=6,
        eval_every=6,
        lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        output_dir=str(root / "adapter"),
        storage_path=str(root / "ray"),
        run_name="lora_test",
    )


def test_prompt_is_masked_in_the_training_rows(settings, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows, val = lora.prepare_inputs(FinetuneConfig(**{**settings, "val_set_size": 0}))
    assert val is None and len(rows) == len(PEOPLE) * (len(PEOPLE) - 1)
    ids, labels = rows[0]
    rec = json.loads(Path(settings["data"]).read_text())[0]
    n_prompt = len(tok(build_prompt(rec["instruction"], rec["input"]))["input_ids"])
    assert (labels[:n_prompt] == IGNORE_INDEX).all()
    assert (labels[n_prompt:] == ids[n_prompt:]).all() and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]).strip() == rec["output"]


def test_lora_fit_writes_a_loadable_trained_adapter(ray_local, settings, tiny_model):
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights
    from transformers import AutoModelForCausalLM

    summary = lora.run(FinetuneConfig(**settings))
    out = Path(settings["output_dir"])
    assert summary["step"] == 12
    lines = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    # 6 held-out records, evaluated by both workers (disjoint slices) every 6 steps
    assert [r["step"] for r in lines if "val_loss" in r] == [6, 12] and summary["val_loss"] > 0

    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(tiny_model) and acfg["r"] == 8
    assert (out / "tokenizer.model").is_file()
    saved = load_peft_weights(str(out))
    assert saved and all(t.numel() > 0 for t in saved.values())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert set(saved) == set(get_peft_model_state_dict(model))  # nothing missing, nothing extra
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: it was trained
    assert any(
        torch.equal(p.detach(), saved[k.replace(".default", "")])
        for k, p in model.named_parameters()
        if "lora_B" in k and k.replace(".default", "") in saved
    )


def test_lora_under_zero3_saves_whole_adapter_tensors(ray_local, settings, tiny_model):
    """The ZeRO-3 trap (notes §5): with persistence threshold 0 a naive save writes (0,) tensors."""
    from peft.utils import load_peft_weights

    out = Path(settings["output_dir"]).with_name("adapter_zero3")
    summary = lora.run(
        FinetuneConfig(
            **{
                **settings,
                "deepspeed": {"preset": "zero3", "zero_optimization": {"stage3_param_persistence_threshold": 0}},
                "max_steps": 4,
                "save_every": 4,
                "output_dir": str(out),
                "run_name": "lora_zero3_test",
            }
        )
    )
    assert summary["step"] == 4
    saved = load_peft_weights(str(out))
    assert saved and all(t.numel() > 0 for t in saved.values())
    assert all(t.shape == (8, 64) for k, t in saved.items() if "lora_A" in k)  # r x hidden, gathered
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
