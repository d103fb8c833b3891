"""The streaming merge against peft's merge_and_unload (the reference), on the adapter shapes that
KnowLM and Chinese-LLaMA-Alpaca produce: all projections, rsLoRA / rank and alpha patterns,
LoRA on embeddings, modules_to_save with a resized vocabulary, GPT-2's fan_in_fan_out."""

import os
import shutil

import pytest
import torch

from .conftest import random_state_dict, read_all, save_checkpoint


def _randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _peft_reference(base_dir, adapter_dir, vocab=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if vocab is not None:
        model.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().state_dict()


def _assert_same(got_dir, want_sd):
    got = read_all(got_dir)
    assert set(got) == set(want_sd)
    for k, v in want_sd.items():
        torch.testing.assert_close(got[k], v.to(got[k].dtype), rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_cfg, tiny_model):
    d = tmp_path_factory.mktemp("base") / "base"
    return save_checkpoint(d, random_state_dict(small_cfg, seed=3), small_cfg, shards=3, tokenizer_from=tiny_model)


def test_stream_merge_equals_peft_all_projections(base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from knowlm_ray.models.lora import merge_lora

    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        rank_pattern={"down_proj": 4},
        alpha_pattern={"v_proj": 5},
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg)
    _randomize_lora(model, 4)
    model.save_pretrained(tmp_path / "ad")
    merge_lora(base, tmp_path / "ad", tmp_path / "out", dtype="auto")
    _assert_same(tmp_path / "out", _peft_reference(base, tmp_path / "ad"))
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == 3
    # the same adapter as a legacy adapter_model.bin (alpaca-lora / KnowLM era) merges the same
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy2(tmp_path / "ad" / "adapter_config.json", legacy)
    torch.save(read_all(tmp_path / "ad"), legacy / "adapter_model.bin")
    merge_lora(base, legacy, tmp_path / "out_bin", dtype="auto")
    a, b = read_all(tmp_path / "out"), read_all(tmp_path / "out_bin")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vocab_expanded_adapter(base, tmp_path, small_cfg):
    """Chinese-LLaMA-Alpaca: new tokens, resized embed_tokens + lm_head saved whole by the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.models.lora import MergeError, merge_lora

    tok = AutoTokenizer.from_pretrained(base)
    tok.add_tokens([f"新词{i}" for i in range(8)])
    v = len(tok)
    assert v == small_cfg.vocab_size + 8
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(v)
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=32,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["embed_tokens", "lm_head"],
            task_type="CAUSAL_LM",
        ),
    )
    _randomize_lora(model, 5)
    model.save_pretrained(tmp_path / "ad")
    tok.save_pretrained(tmp_path / "ad")
    merge_lora(base, tmp_path / "ad", tmp_path / "out")
    _assert_same(tmp_path / "out", _peft_reference(base, tmp_path / "ad", vocab=v))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.vocab_size == v == len(AutoTokenizer.from_pretrained(tmp_path / "out"))

    # the expanded tokenizer with an adapter that did not save the resized embeddings: refused
    plain = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    plain.save_pretrained(tmp_path / "ad2")
    tok.save_pretrained(tmp_path / "ad2")
    with pytest.raises(
        MergeError,
        match=rf"tokenizer .* has {v} tokens but the merged model's embeddings have "
        rf"{v - 8} rows",
    ):
        merge_lora(base, tmp_path / "ad2", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_fan_in_fan_out_gpt2(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowlm_ray.models.lora import merge_lora

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp_path / "g"
    )
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "g"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
    )
    _randomize_lora(model, 6)
    model.save_pretrained(tmp_path / "ad")
    merge_lora(tmp_path / "g", tmp_path / "ad", tmp_path / "out")
    want = _peft_reference(tmp_path / "g", tmp_path / "ad")
    got = read_all(tmp_path / "out")
    for k in ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_refusals_name_the_problem(base, tmp_path, small_cfg):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from knowlm_ray.models.lora import MergeError, merge_lora

    from .conftest import llama_config

    ad = tmp_path / "ad"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    ).save_pretrained(ad)
    # alpaca-lora's 443-byte adapter: a file with no tensors in it
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy2(ad / "adapter_config.json", empty)
    save_file({}, empty / "adapter_model.safetensors")
    with pytest.raises(MergeError, match="holds no tensors"):
        merge_lora(base, empty, tmp_path / "o")
    # an adapter trained on another model size
    other_cfg = llama_config(small_cfg.vocab_size, hidden=96)
    other = save_checkpoint(tmp_path / "other", random_state_dict(other_cfg, seed=0), other_cfg)
    with pytest.raises(
        MergeError,
        match=r"LoRA matrices for model\.layers\.\d\.self_attn\.[qv]_proj\.weight have shapes "
        r".*Is --base the model",
    ):
        merge_lora(other, ad, tmp_path / "o")
    # DoRA is not the plain formula
    dora = tmp_path / "dora"
    shutil.copytree(ad, dora)
    (dora / "adapter_config.json").write_text(
        (ad / "adapter_config.json").read_text().replace('"use_dora": false', '"use_dora": true')
    )
    with pytest.raises(MergeError, match="DoRA"):
        merge_lora(base, dora, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_untrained_adapter_warns(base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from knowlm_ray.models.lora import merge_lora

    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    ).save_pretrained(tmp_path / "ad")
    with pytest.warns(UserWarning, match="every lora_B matrix .* is zero"):
        merge_lora(base, tmp_path / "ad", tmp_path / "out", dtype="auto")
    want, got = read_all(base), read_all(tmp_path / "out")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_two_adapters_equal_peft_merging_one_after_the_other(base, tmp_path, capsys):
    """Adapter 2 was trained on base + adapter 1; both touch q_proj, and adapter 1 saves lm_head whole
    (modules_to_save) which adapter 2 then puts a LoRA on."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from knowlm_ray.cli import main

    m1 = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "embed_tokens"],
            modules_to_save=["lm_head"],
            task_type="CAUSAL_LM",
        ),
    )
    _randomize_lora(m1, 11)
    m1.save_pretrained(tmp_path / "ad1")
    stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "ad1").merge_and_unload()
    q = "model.layers.0.self_attn.q_proj.weight"
    q_stage1 = stage1.state_dict()[q].clone()
    m2 = get_peft_model(
        stage1, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "down_proj", "lm_head"], task_type="CAUSAL_LM")
    )
    _randomize_lora(m2, 12)
    m2.save_pretrained(tmp_path / "ad2")

    reference = AutoModelForCausalLM.from_pretrained(base)
    for ad in ("ad1", "ad2"):
        reference = PeftModel.from_pretrained(reference, tmp_path / ad).merge_and_unload()
    main(
        [
            "weights",
            "merge-lora",
            "--base",
            str(base),
            "--lora",
            str(tmp_path / "ad1"),
            "--lora",
            str(tmp_path / "ad2"),
            "--out",
            str(tmp_path / "out"),
            "--dtype",
            "auto",
        ]
    )
    assert "(2 adapters)" in capsys.readouterr().out
    _assert_same(tmp_path / "out", reference.state_dict())
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == 3
    # both adapters really changed q_proj: merging only the first gives something else
    assert not torch.allclose(read_all(tmp_path / "out")[q], q_stage1, atol=1e-4)


def test_second_adapter_for_another_model_names_adapter_and_tensor(base, tmp_path, small_cfg):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from knowlm_ray.models.lora import MergeError, merge_lora

    from .conftest import llama_config

    good, bad = tmp_path / "good", tmp_path / "bad"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    ).save_pretrained(good)
    other_cfg = llama_config(small_cfg.vocab_size, hidden=96)
    other = save_checkpoint(tmp_path / "other", random_state_dict(other_cfg, seed=0), other_cfg)
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(other), LoraConfig(r=4, target_modules=["o_proj"], task_type="CAUSAL_LM")
    ).save_pretrained(bad)
    with pytest.raises(
        MergeError,
        match=rf"adapter {bad}: LoRA matrices for model\.layers\.\d\.self_attn\.o_proj\.weight"
        rf" have shapes A \[4, 96\] / B \[96, 4\].* base tensor's \[64, 64\].*"
        rf"adapters before it \({good}\)",
    ):
        merge_lora(base, [good, bad], tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(MergeError, match="at least one --lora"):
        merge_lora(base, [], tmp_path / "o")


def test_padded_vocabulary_merges_and_only_real_inconsistencies_are_refused(tmp_path, tiny_model):
    """The issue's case: a LLaMA with 4,096 embedding rows and a 4,000-token tokenizer (padded to a
    round size, like Qwen2's 151,936 rows for 151,665 tokens) merges; refused are tokens without
    rows and an adapter that resized the vocabulary without its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.atomic import DiskFullError
    from knowlm_ray.models.lora import MergeError, merge_lora

    from .conftest import llama_config

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens([f"tok{i}" for i in range(4000 - len(tok))])
    assert len(tok) == 4000
    tok.save_pretrained(tmp_path / "tok")
    cfg = llama_config(4096)
    base = save_checkpoint(
        tmp_path / "base", random_state_dict(cfg, seed=11), cfg, shards=2, tokenizer_from=tmp_path / "tok"
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    _randomize_lora(model, 12)
    model.save_pretrained(tmp_path / "ad")
    merge_lora(base, tmp_path / "ad", tmp_path / "out")
    _assert_same(tmp_path / "out", _peft_reference(base, tmp_path / "ad"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.vocab_size == 4096 and len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 4000

    # a full disk while merging again leaves the previous merge byte for byte. No unprivileged way to
    # fill a disk here: ENOSPC is raised at fsync of the new files, where the kernel reports it for
    # delayed allocation (only this test patches the write layer)
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}

    def full(fd):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", full)
        with pytest.raises(DiskFullError, match=rf"^no space left on device writing {tmp_path}/out/\S+; the previous "):
            merge_lora(base, tmp_path / "ad", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())} == before
    assert not list(tmp_path.glob(".out.*"))

    # tokens without embedding rows: a 4,100-token tokenizer shipped with the adapter
    tok.add_tokens([f"more{i}" for i in range(100)])
    tok.save_pretrained(tmp_path / "ad")
    with pytest.raises(
        MergeError,
        match=r"has 4100 tokens but the merged model's embeddings have 4096 rows .*: token ids 4096 to 4099 have "
        r"no embedding row",
    ) as err:
        merge_lora(base, tmp_path / "ad", tmp_path / "out2")
    assert "\n" not in str(err.value)

    # an adapter that resized the vocabulary (embeddings saved whole) but ships no tokenizer
    grown = AutoModelForCausalLM.from_pretrained(base)
    grown.resize_token_embeddings(4160)
    resized = LoraConfig(
        r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"
    )
    get_peft_model(grown, resized).save_pretrained(tmp_path / "ad3")
    with pytest.raises(MergeError, match=r"resized the vocabulary \(.*4096 -> 4160 rows\) but ships no tokenizer"):
        merge_lora(base, tmp_path / "ad3", tmp_path / "out3")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
