"""Peak memory of recover and merge-lora is bounded by a shard, not the model (measured in a child)."""

import json

import pytest
import torch

from .conftest import llama_config, peak_rss, random_state_dict, save_checkpoint

MB = 2**20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A ~42 MB fp32 LLaMA in 4 shards, a fine-tuned copy's diff, and a LoRA adapter on every projection."""
    from safetensors.torch import save_file

    from knowlm_ray.models.weight_diff import make_diff

    root = tmp_path_factory.mktemp("big")
    cfg = llama_config(4000, hidden=512, layers=2, heads=8, intermediate=1376)
    sd = random_state_dict(cfg, seed=0)
    raw = save_checkpoint(root / "raw", sd, cfg, shards=4)
    g = torch.Generator().manual_seed(1)
    tuned = save_checkpoint(
        root / "tuned", {k: v * (1 + 0.01 * torch.rand(v.shape, generator=g)) for k, v in sd.items()}, cfg, shards=4
    )
    make_diff(raw, tuned, root / "diff")
    ad = root / "adapter"
    ad.mkdir()
    lora = {}
    for name, t in sd.items():
        if name.endswith("proj.weight"):
            mod = "base_model.model." + name[: -len(".weight")]
            lora[f"{mod}.lora_A.weight"] = 0.01 * torch.randn(8, t.shape[1], generator=g)
            lora[f"{mod}.lora_B.weight"] = 0.01 * torch.randn(t.shape[0], 8, generator=g)
    save_file(lora, ad / "adapter_model.safetensors")
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
        )
    )
    largest = max(f.stat().st_size for f in raw.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in raw.glob("*.safetensors"))
    return root, largest, total


@pytest.mark.parametrize("op", ["recover", "merge-lora", "merge-lora-x2"])
def test_peak_rss_bounded_by_largest_shard(big, op):
    root, largest, total = big
    if op == "recover":
        imports = "from knowlm_ray.models.weight_diff import recover"
        work = f"recover({str(root / 'raw')!r}, {str(root / 'diff')!r}, {str(root / 'out_rec')!r})"
    else:  # x2: the adapter folded in twice, both streamed in the same pass
        imports = "from knowlm_ray.models.lora import merge_lora"
        adapters = [str(root / "adapter")] * (2 if op.endswith("x2") else 1)
        work = f"merge_lora({str(root / 'raw')!r}, {adapters!r}, {str(root / ('out_' + op))!r})"
    m = peak_rss(imports, work)
    print(
        f"{op}: model {total / MB:.1f} MB, largest shard {largest / MB:.1f} MB, "
        f"peak RSS growth {m['growth'] / MB:.1f} MB over {m['baseline'] / MB:.0f} MB after imports"
    )
    assert total > 3.5 * largest  # really several shards
    assert m["growth"] <= 2.5 * largest, (
        f"peak RSS grew by {m['growth'] / MB:.1f} MB (largest shard {largest / MB:.1f} MB)"
    )
