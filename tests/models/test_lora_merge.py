import json

import pytest
import torch


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """A peft adapter with non-zero B matrices, so merging really changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_merge_equals_peft_forward(tiny_model, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.cli import main

    out = tmp_path / "merged"
    main(["weights", "merge-lora", "--base", str(tiny_model), "--lora", str(adapter), "--out", str(out)])
    merged, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lora" in k for k in merged.state_dict())
    ids = AutoTokenizer.from_pretrained(out)("浙江大学位于杭州。", return_tensors="pt")["input_ids"]
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        want, got, plain = ref(ids).logits, merged.eval()(ids).logits, base(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert not torch.allclose(plain, got, atol=1e-3), "merge changed nothing"


def test_merge_refuses_missing_or_empty_adapter(tiny_model, adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    from knowlm_ray.models.lora import MergeError, merge_lora

    with pytest.raises(MergeError, match="no adapter_config.json"):
        merge_lora(tiny_model, tmp_path, tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: torch.empty(0) for k in tensors}, broken / "adapter_model.safetensors")
    with pytest.raises(Exception, match="(?i)empty|size|shape"):
        merge_lora(tiny_model, broken, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
