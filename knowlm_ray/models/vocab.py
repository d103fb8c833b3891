"""Vocabulary expansion (Chinese-LLaMA-Alpaca's merge_tokenizers.py + resized embeddings).

``expand_vocab(base_dir, extra, out_dir)`` appends every piece of a second sentencepiece model
that the base ``tokenizer.model`` lacks (score 0, as Chinese-LLaMA-Alpaca does: LLaMA's 32,000 +
a 20,000-piece Chinese model gave 49,953), writes the merged ``tokenizer.model`` and the Hugging
Face tokenizer converted from it, and the base model with its input embeddings and (untied)
``lm_head`` resized to the new vocabulary, every new row initialised to the mean of the old rows.

Old pieces keep their ids, so text the new pieces do not cover tokenizes exactly as before;
text they cover gets fewer, longer tokens. ``extra`` is a sentencepiece ``.model`` file, or text
(files / dirs: .txt, .jsonl, code) to train one on first (``vocab_size`` pieces, LLaMA-style
BPE with byte fallback). Then pretrain stage 1 (embeddings + lm_head) and stage 2 (LoRA with
``lora.modules_to_save: [embed_tokens, lm_head]``) teach the model the new rows.

The model is loaded whole (as Chinese-LLaMA-Alpaca's script does): RAM ~ the model's size.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from knowlm_ray.errors import UserError

NORMAL, USER_DEFINED = 1, 4  # sentencepiece ModelProto.SentencePiece.Type


class VocabError(UserError, ValueError):
    """Inputs that cannot be merged; the message names the file."""


def _load_proto(path: str | Path):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or a text file
        raise VocabError(f"{path}: not a sentencepiece model ({exc})") from None
    if not len(proto.pieces):
        raise VocabError(f"{path}: not a sentencepiece model (no pieces)")
    return proto


def merge_sp_models(base: bytes, extra: bytes) -> tuple[bytes, list[str]]:
    """Serialized base model with the extra model's missing normal pieces appended (score 0).

    Control, unknown and byte pieces of the extra model are never added: the base has its own
    (<unk> <s> </s>, and <0x00>..<0xFF> with byte fallback)."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    base_proto, extra_proto = sp_pb2.ModelProto(), sp_pb2.ModelProto()
    base_proto.ParseFromString(base)
    extra_proto.ParseFromString(extra)
    have = {p.piece for p in base_proto.pieces}
    added = []
    for p in extra_proto.pieces:
        if p.type in (NORMAL, USER_DEFINED) and p.piece not in have:
            new = sp_pb2.ModelProto.SentencePiece()
            new.piece, new.score, new.type = p.piece, 0.0, NORMAL
            base_proto.pieces.append(new)
            have.add(p.piece)
            added.append(p.piece)
    return base_proto.SerializeToString(), added


def _extra_model_bytes(extra: str | Path | Iterable[str | Path], vocab_size: int) -> bytes:
    paths = [Path(extra)] if isinstance(extra, (str, Path)) else [Path(p) for p in extra]
    for p in paths:
        if not p.exists():
            raise VocabError(f"not found: {p}")
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix == ".model":
        _load_proto(paths[0])  # a clear error for a broken file
        return paths[0].read_bytes()
    from knowlm_ray.models.tiny import iter_corpus_lines, train_sentencepiece

    lines = list(iter_corpus_lines(paths))
    if not lines:
        raise VocabError(f"no text to train a sentencepiece model on in {[str(p) for p in paths]}")
    return train_sentencepiece(lines, vocab_size)


def _resize_with_mean(model, new_size: int) -> int:
    import torch

    old_size = model.get_input_embeddings().weight.shape[0]
    if new_size == old_size:
        return old_size
    model.resize_token_embeddings(new_size, mean_resizing=False)
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
        mats.append(out.weight)
    with torch.no_grad():
        for w in mats:
            w[old_size:] = w[:old_size].float().mean(dim=0).to(w.dtype)
    return old_size


def expand_vocab(
    base_dir: str | Path, extra: str | Path | Iterable[str | Path], out_dir: str | Path, vocab_size: int = 20000
) -> dict:
    """Merge ``extra``'s pieces into ``base_dir``'s tokenizer.model and write tokenizer + resized
    model to ``out_dir`` (staged, then swapped in). Returns a summary dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaTokenizer

    from knowlm_ray.models.publish import publish_dir, staging_dir

    base = Path(base_dir)
    sp_file = base / "tokenizer.model"
    if not sp_file.is_file():
        raise VocabError(f"{base}: no tokenizer.model (a sentencepiece LLaMA-family tokenizer is needed)")
    if not (base / "config.json").is_file():
        raise VocabError(f"{base}: not a Hugging Face model dir (no config.json)")
    base_bytes = sp_file.read_bytes()
    base_size = len(_load_proto(sp_file).pieces)
    import json

    rows = json.loads((base / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    if rows != base_size:
        # New pieces take ids base_size.. : they must be fresh rows, not padding rows or missing ones.
        raise VocabError(
            f"{base}: the model has vocab_size {rows} but tokenizer.model has {base_size} pieces; "
            "expand a base whose embeddings match its sentencepiece model"
        )
    extra_bytes = _extra_model_bytes(extra, vocab_size)
    merged, added = merge_sp_models(base_bytes, extra_bytes)

    base_tok = AutoTokenizer.from_pretrained(str(base))
    stage = staging_dir(out_dir)
    try:
        (stage / "tokenizer.model").write_bytes(merged)
        tok = LlamaTokenizer.from_pretrained(stage, legacy=False, add_bos_token=True, add_eos_token=False)
        if len(tok) != base_size + len(added):
            raise VocabError(f"converted tokenizer has {len(tok)} tokens, expected {base_size} + {len(added)}")
        if base_tok.pad_token is not None:
            tok.pad_token = base_tok.pad_token
        tok.padding_side = base_tok.padding_side
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
        old_rows = _resize_with_mean(model, len(tok))
        model.config.vocab_size = len(tok)
        with torch.no_grad():
            model.save_pretrained(stage, safe_serialization=True)
        tok.save_pretrained(stage)  # tokenizer.json + config; tokenizer.model is already there
        publish_dir(stage, out_dir, carry=())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    summary = {
        "base_vocab": base_size,
        "model_rows_before": old_rows,
        "extra_pieces": len(_pieces(extra_bytes)),
        "added": len(added),
        "vocab_size": len(tok),
        "out_dir": str(out_dir),
    }
    print(
        f"expand-vocab: {base_size} + {len(added)} new pieces = {len(tok)} tokens; embeddings "
        f"{old_rows} -> {len(tok)} rows (new rows = mean of old) -> {out_dir}",
        flush=True,
    )
    return summary


def _pieces(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto.pieces
