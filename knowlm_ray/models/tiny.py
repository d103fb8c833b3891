"""The embedded default: a sentencepiece tokenizer trained on data/sample and a tiny LLaMA.

It stands in for LLaMA-13B on a 2-core CPU: same architecture class, same tokenizer family
(BPE, byte fallback, <unk>=0 <s>=1 </s>=2), saved as an ordinary Hugging Face directory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_dir

DEFAULT_CORPUS = ("data/sample/zh.jsonl", "data/sample/en.jsonl", "data/sample/en_books.txt", "data/sample/code")
TEXT_KEYS = ("text", "content", "title", "input", "output", "instruction")


@dataclass
class TinySpec:
    vocab_size: int = 4000
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 344
    max_positions: int = 1024
    seed: int = 0


def iter_corpus_lines(paths: Iterable[str | Path]) -> Iterator[str]:
    """Text lines for tokenizer training from jsonl (string fields), text and code files/dirs."""
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"corpus path not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    if f.suffix in (".jsonl", ".json") and line.lstrip().startswith("{"):
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # malformed lines are the corpus pipeline's business
                        for key in TEXT_KEYS:
                            if isinstance(obj.get(key), str) and obj[key].strip():
                                yield obj[key]
                    else:
                        yield line


def train_sentencepiece(lines: Iterable[str], vocab_size: int) -> bytes:
    """Train a LLaMA-style BPE sentencepiece model in memory; returns the serialized model."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        max_sentence_length=1 << 16,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def tiny_llama_config(
    folder: Path,
    sp_model: bytes,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    max_positions: int,
    **extra: Any,
) -> tuple[Any, Any]:
    """Write ``sp_model`` as ``folder/tokenizer.model`` and return (the LLaMA tokenizer over it, left
    padding with UNK; a LlamaConfig of these sizes with that tokenizer's special ids). ``extra``:
    further LlamaConfig keys."""
    from transformers import LlamaConfig, LlamaTokenizer

    (folder / "tokenizer.model").write_bytes(sp_model)
    tok = LlamaTokenizer.from_pretrained(folder, legacy=False, add_bos_token=True, add_eos_token=False)
    tok.pad_token = tok.unk_token
    tok.padding_side = "left"
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )
    return tok, cfg


def build_tiny(
    out_dir: str | Path, corpus: Iterable[str | Path] = DEFAULT_CORPUS, spec: TinySpec | None = None
) -> Path:
    """Train the tokenizer and build a randomly initialised tiny LlamaForCausalLM into ``out_dir``
    (``spec``: the embedded default's sizes unless given)."""
    spec = spec or TinySpec()
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    lines = list(iter_corpus_lines(corpus))
    if not lines:
        raise ValueError(f"no text found in corpus paths {list(map(str, corpus))}")
    model_bytes = train_sentencepiece(lines, spec.vocab_size)

    with atomic_dir(out) as tmp:
        tok, cfg = tiny_llama_config(
            tmp,
            model_bytes,
            hidden=spec.hidden,
            intermediate=spec.intermediate,
            layers=spec.layers,
            heads=spec.heads,
            max_positions=spec.max_positions,
            rms_norm_eps=1e-5,
        )
        if len(tok) < 300:  # the silent 3-token failure mode of a tokenizer built from nothing
            raise RuntimeError(f"tokenizer conversion failed: vocabulary of {len(tok)}")
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # writes tokenizer.json; keep tokenizer.model beside it for GGUF
    return out
