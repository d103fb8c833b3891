"""export-gguf: read the file back with gguf.GGUFReader (metadata, vocab, names, shapes, values
equal to the HF weights after undoing the q/k permutation); with llama.cpp available, greedy
tokens equal transformers'. LoRA adapters to llama.cpp adapter GGUFs likewise."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install knowlm-ray[gguf])")

HERE = Path(__file__).parent
LLAMA_CPP_PYTHON = os.environ.get("KNOWLM_LLAMA_CPP_PYTHON")
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None or bool(LLAMA_CPP_PYTHON)
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP,
    reason="llama_cpp is not importable (pip install llama-cpp-python compiles llama.cpp, ~6 min "
    "on 2 cores) and $KNOWLM_LLAMA_CPP_PYTHON names no interpreter that has it",
)


def _fields(reader):
    out = {}
    for k, f in reader.fields.items():
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001
            pass
    return out


def _hf_weights(model_dir):
    from .conftest import read_all

    return read_all(model_dir)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    from knowlm_ray.models.gguf_export import export_gguf

    d = tmp_path_factory.mktemp("gguf")
    return {ot: Path(export_gguf(tiny_model, d / f"tiny-{ot}.gguf", ot)["out"]) for ot in ("f32", "f16", "q8_0")}


def test_metadata_and_vocab(exported, tiny_model):
    import sentencepiece as spm

    cfg = json.loads((tiny_model / "config.json").read_text())
    f = _fields(gguf.GGUFReader(exported["f16"]))
    assert f["general.architecture"] == "llama" and f["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert f["llama.block_count"] == cfg["num_hidden_layers"]
    assert f["llama.embedding_length"] == cfg["hidden_size"]
    assert f["llama.feed_forward_length"] == cfg["intermediate_size"]
    assert f["llama.attention.head_count"] == f["llama.attention.head_count_kv"] == cfg["num_attention_heads"]
    assert f["llama.rope.dimension_count"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert f["llama.context_length"] == cfg["max_position_embeddings"]
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert f["llama.vocab_size"] == cfg["vocab_size"]
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model / "tokenizer.model"))
    assert f["tokenizer.ggml.model"] == "llama"
    assert f["tokenizer.ggml.tokens"] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert f["tokenizer.ggml.scores"] == pytest.approx([sp.GetScore(i) for i in range(sp.vocab_size())])
    types = f["tokenizer.ggml.token_type"]
    T = gguf.TokenType
    assert types[0] == T.UNKNOWN and types[1] == types[2] == T.CONTROL
    assert types[sp.PieceToId("<0x41>")] == T.BYTE and types.count(T.BYTE) == 256
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f["tokenizer.ggml.add_bos_token"] is True


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_tensors_equal_hf_weights(exported, tiny_model, outtype):
    from knowlm_ray.models.gguf_export import unpermute_qk

    cfg = json.loads((tiny_model / "config.json").read_text())
    n_head = cfg["num_attention_heads"]
    hf = _hf_weights(tiny_model)
    tensors = {t.name: t for t in gguf.GGUFReader(exported[outtype]).tensors}
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    assert set(tensors) == {tmap.get_name(k, try_suffixes=(".weight",)) for k in hf}
    Q = gguf.GGMLQuantizationType
    for name, w in hf.items():
        t = tensors[tmap.get_name(name, try_suffixes=(".weight",))]
        assert list(reversed(t.shape.tolist())) == list(w.shape), name  # ggml lists dims innermost first
        if t.tensor_type == Q.Q8_0:
            data = torch.from_numpy(gguf.quants.dequantize(t.data, Q.Q8_0).copy())
        else:
            data = torch.from_numpy(np.asarray(t.data).copy())
        data = data.reshape(w.shape).float()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            data = unpermute_qk(data, n_head)
        if outtype == "f32" or w.dim() == 1:
            assert t.tensor_type == Q.F32 and torch.equal(data, w), name
        elif outtype == "f16" or w.shape[-1] % 32:  # rows q8_0 cannot block stay f16, as in llama.cpp
            assert t.tensor_type == Q.F16 and torch.equal(data, w.half().float()), name
        else:
            assert t.tensor_type == Q.Q8_0
            # q8_0: blocks of 32 with one fp16 scale: error <= half a step of max|w|/127 per block
            assert (data - w).abs().max() <= w.abs().max() / 127, name


def test_refuses_non_llama_and_missing_sentencepiece(tmp_path, tiny_model):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.gguf_export import export_gguf

    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(WeightsError, match="LLaMA-family.*GPT2LMHeadModel"):
        export_gguf(tmp_path / "g", tmp_path / "g.gguf")
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    (m / "tokenizer.model").unlink()
    with pytest.raises(WeightsError, match="no tokenizer.model"):
        export_gguf(m, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


@pytest.fixture(scope="module")
def lora_adapter(tiny_model, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"
        ),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(out)
    return out


def test_lora_adapter_gguf(tiny_model, lora_adapter, tmp_path, capsys):
    from safetensors.torch import load_file

    from knowlm_ray.cli import main
    from knowlm_ray.models.gguf_export import unpermute_qk

    out = tmp_path / "lora.gguf"
    main(
        [
            "weights",
            "export-gguf",
            "--model",
            str(lora_adapter),
            "--base",
            str(tiny_model),
            "--out",
            str(out),
            "--outtype",
            "f32",
        ]
    )
    assert "llama.cpp adapter" in capsys.readouterr().out
    r = gguf.GGUFReader(out)
    f = _fields(r)
    assert f["general.type"] == "adapter" and f["adapter.type"] == "lora" and f["adapter.lora.alpha"] == 16.0
    tensors = {t.name: torch.from_numpy(np.asarray(t.data).copy()) for t in r.tensors}
    assert len(tensors) == 2 * 4 * 2  # (a, b) x 4 modules x 2 layers
    ad = load_file(lora_adapter / "adapter_model.safetensors")
    pre = "base_model.model.model.layers.1."
    torch.testing.assert_close(tensors["blk.1.attn_q.weight.lora_a"], ad[pre + "self_attn.q_proj.lora_A.weight"])
    torch.testing.assert_close(
        unpermute_qk(tensors["blk.1.attn_k.weight.lora_b"], 4), ad[pre + "self_attn.k_proj.lora_B.weight"]
    )
    torch.testing.assert_close(tensors["blk.1.ffn_down.weight.lora_b"], ad[pre + "mlp.down_proj.lora_B.weight"])


def _llama_cpp_greedy(model: Path, ids: list[int], n: int, lora: Path | None = None) -> dict:
    args = {"model": str(model), "prompt_ids": ids, "n": n, "lora": str(lora) if lora else None}
    if importlib.util.find_spec("llama_cpp") is not None:
        sys.path.insert(0, str(HERE))
        from llama_cpp_greedy import greedy

        return greedy(**{k: v for k, v in args.items()})
    res = subprocess.run(
        [LLAMA_CPP_PYTHON, str(HERE / "llama_cpp_greedy.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


@needs_llama_cpp
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_equal_transformers(exported, tiny_model, outtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("浙江大学位于杭州市，")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        want = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=12,
        )[0, len(ids) :].tolist()
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    got = _llama_cpp_greedy(exported[outtype], ids, 12)
    assert got["tokens"] == want
    assert np.abs(np.asarray(got["logits"]) - logits).max() < 5e-3


@needs_llama_cpp
def test_llama_cpp_lora_equals_merged_model(exported, tiny_model, lora_adapter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.models.gguf_export import export_lora_gguf
    from knowlm_ray.models.lora import merge_lora

    lora_gguf = Path(export_lora_gguf(lora_adapter, tiny_model, tmp_path / "lora.gguf", "f32")["out"])
    merge_lora(tiny_model, lora_adapter, tmp_path / "merged")
    ids = AutoTokenizer.from_pretrained(tiny_model)("The river Thames flows")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        logits = merged(torch.tensor([ids])).logits[0].double().numpy()
        want = merged.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=8,
        )[0, len(ids) :].tolist()
    got = _llama_cpp_greedy(exported["f32"], ids, 8, lora=lora_gguf)
    assert np.abs(np.asarray(got["logits"]) - logits).max() < 5e-3
    assert got["tokens"] == want
