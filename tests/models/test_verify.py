"""`knowlm weights verify`: catches the directory problems that give garbage or crashes later."""

import json
import shutil

import pytest


def _cli(*args):
    from knowlm_ray.cli import main

    main(["weights", "verify", *map(str, args)])


def test_healthy_model_and_manifest(tiny_model, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    _cli(d, "--write-manifest", "--load")
    out = capsys.readouterr().out
    assert "OK: " in out and "parameters" in out and "float32" in out
    assert "real load and one forward pass: OK" in out
    lines = (d / "checksums.sha256").read_text().splitlines()
    assert any(ln.endswith("  model.safetensors") for ln in lines)
    # the manifest catches a modified file from then on
    cfg = json.loads((d / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-6
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as exc:
        _cli(d, "--no-checksums")
    assert exc.value.code == 1
    assert "config.json: sha256 differs from checksums.sha256" in capsys.readouterr().out


def test_vocab_mismatch_is_a_problem(tiny_model, tmp_path, capsys):
    """Chinese-LLaMA-Alpaca's classic: an expanded tokenizer next to an unexpanded model."""
    from transformers import AutoTokenizer

    from knowlm_ray.models.verify import verify

    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    tok = AutoTokenizer.from_pretrained(d)
    n = len(tok)
    tok.add_tokens(["[PAD]", "新词"])
    tok.save_pretrained(d)
    report = verify(d, checksums=False)
    assert any(f"tokenizer has {n + 2} tokens but config vocab_size is {n}" in p for p in report["problems"])
    with pytest.raises(SystemExit) as exc:
        _cli(d, "--no-checksums")
    assert exc.value.code == 1
    assert "1 PROBLEM(S)" in capsys.readouterr().out


def test_missing_and_unexpected_tensors_and_shapes(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from knowlm_ray.models.verify import verify

    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    sd = load_file(d / "model.safetensors")
    del sd["model.norm.weight"]
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 8)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    problems = "\n".join(verify(d, checksums=False)["problems"])
    assert "missing keys when loading: model.norm.weight" in problems
    assert "unexpected keys when loading: model.layers.0.mlp.extra.weight" in problems
    assert "tensor model.layers.0.self_attn.q_proj.weight has shape [8, 8], the config implies [64, 64]" in problems
    # a truncated file (interrupted copy) is named as such
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-10])
    assert any("truncated" in p for p in verify(d, checksums=False)["problems"])


def test_padded_vocabulary_is_healthy_and_tokens_without_rows_are_not(tiny_model, tmp_path, capsys):
    """merge-lora's case: a LLaMA with 4,096 embedding rows and a 4,000-token tokenizer (padded to a
    round size) verifies with no flag; a 4,100-token tokenizer beside it (ids without rows) does not."""
    from transformers import AutoTokenizer

    from knowlm_ray.models.verify import verify

    from .conftest import llama_config, random_state_dict, save_checkpoint

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens([f"tok{i}" for i in range(4000 - len(tok))])
    assert len(tok) == 4000
    tok.save_pretrained(tmp_path / "tok")
    cfg = llama_config(4096)
    d = save_checkpoint(tmp_path / "m", random_state_dict(cfg, seed=3), cfg, tokenizer_from=tmp_path / "tok")
    report = verify(d, checksums=False)
    assert report["problems"] == []
    assert report["vocab"] == {"config": 4096, "embedding_rows": 4096, "tokenizer": 4000}
    assert "embeddings padded: 96 rows beyond the tokenizer's 4000 tokens (vocab_size 4096" in " ".join(report["notes"])
    _cli(d, "--no-checksums")  # exit 0 without --allow-padded-vocab
    assert "OK: " in capsys.readouterr().out
    _cli(d, "--no-checksums", "--allow-padded-vocab")  # old scripts keep working
    assert "OK: " in capsys.readouterr().out

    tok.add_tokens([f"more{i}" for i in range(100)])
    tok.save_pretrained(d)
    problems = verify(d, checksums=False)["problems"]
    assert problems == [
        "the tokenizer has 4100 tokens but config vocab_size is 4096: ids >= 4096 index past the embeddings "
        "(wrong tokenizer for this model?)"
    ]
    with pytest.raises(SystemExit) as exc:
        _cli(d, "--no-checksums", "--allow-padded-vocab")
    assert exc.value.code == 1
