"""Vocabulary expansion: old text keeps its ids, new pieces shorten new text, model rows == tokenizer size."""

from __future__ import annotations

import json
import re

import pytest

from knowlm_ray.models.vocab import VocabError, expand_vocab, merge_sp_models

ENGLISH = ["The river Thames flows through London.", "def train(model, steps=10):\n    return model"]


def _chinese_only(repo_root, tmp_path):
    """A Chinese-only corpus (CJK characters and Chinese punctuation): its pieces cannot touch English."""
    lines = []
    for line in (repo_root / "data" / "sample" / "zh.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            text = json.loads(line).get("content", "")
        except (ValueError, AttributeError):
            continue
        text = "".join(re.findall(r"[\u4e00-\u9fff，。]+", text if isinstance(text, str) else ""))
        if len(text) > 10:
            lines.append(text)
    path = tmp_path / "zh.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, lines


def test_expand_vocab_merges_pieces_and_resizes_the_model(tiny_model, repo_root, tmp_path):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, lines = _chinese_only(repo_root, tmp_path)
    summary = expand_vocab(tiny_model, corpus, tmp_path / "out", vocab_size=6000)
    out = tmp_path / "out"
    base_tok, tok = AutoTokenizer.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(out)
    assert summary["added"] > 100 and len(tok) == len(base_tok) + summary["added"] == summary["vocab_size"]

    for text in ENGLISH:  # old text: exactly the old ids
        assert tok(text)["input_ids"] == base_tok(text)["input_ids"]
    zh = lines[0][:60]
    new_ids, old_ids = tok(zh)["input_ids"], base_tok(zh)["input_ids"]
    assert any(i >= len(base_tok) for i in new_ids) and len(new_ids) < len(old_ids)  # new pieces used
    assert tok.decode(new_ids, skip_special_tokens=True) == zh
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))  # HF == sentencepiece
    assert [tok.bos_token_id] + sp.encode(zh) == new_ids

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    n_old = len(base_tok)
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert model.lm_head.weight.shape[0] == len(tok)
    emb, old = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert torch.equal(emb[:n_old], old)  # old rows untouched
    assert torch.allclose(emb[n_old:], old.mean(0).expand_as(emb[n_old:]), atol=1e-6)  # new rows = mean
    assert torch.allclose(model.lm_head.weight[n_old:], base.lm_head.weight.mean(0).expand_as(emb[n_old:]), atol=1e-6)

    # an sp .model works as `extra` too, and merging twice adds nothing new (no duplicates)
    again = expand_vocab(out, out / "tokenizer.model", tmp_path / "again")
    assert again["added"] == 0 and again["vocab_size"] == len(tok)


def test_merge_skips_duplicates_and_control_pieces(tiny_model):
    base = (tiny_model / "tokenizer.model").read_bytes()
    merged, added = merge_sp_models(base, base)
    assert added == [] and merged == base
    with pytest.raises(VocabError, match="not found"):
        expand_vocab(tiny_model, tiny_model / "nope.model", tiny_model.parent / "x")
