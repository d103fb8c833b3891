import json

import pytest


def test_tiny_model_loads_cleanly(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model, info = AutoModelForCausalLM.from_pretrained(tiny_model, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.vocab_size == len(tok)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tiny_model / "tokenizer.model").is_file() and (tiny_model / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "text", ["浙江大学位于杭州市。", "Knowledge graphs, 2023: 3.14 km!", "def f(x):\n    return x  # 😀"]
)
def test_tokenizer_round_trips_with_bos_and_byte_fallback(tiny_model, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_sentencepiece_model_matches_hf_ids(tiny_model):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(tiny_model / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "西湖 is a lake in Hangzhou 杭州。"
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_cli_init_tiny(tmp_path):
    from knowlm_ray.cli import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"第{i}句话。Sentence {i} here."}, ensure_ascii=False) for i in range(200))
        + "\n{not json\n"
    )
    main(
        [
            "init-tiny",
            "--out",
            str(tmp_path / "m"),
            "--corpus",
            str(corpus),
            "--vocab-size",
            "300",
            "--hidden",
            "32",
            "--layers",
            "1",
        ]
    )
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["hidden_size"] == 32 and cfg["num_hidden_layers"] == 1
    assert not list(tmp_path.glob(".m.*")), "temp dir left behind"


def test_missing_corpus_is_a_clear_error(tmp_path):
    from knowlm_ray.models.tiny import build_tiny

    with pytest.raises(FileNotFoundError, match="nope"):
        build_tiny(tmp_path / "m", [tmp_path / "nope"])
