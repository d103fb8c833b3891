"""Documents -> split samples (the tokenising stage; see ``split.py`` for the rules).

``SampleBuilder`` is a callable class so Ray Data runs it on an actor pool and each actor loads
the HF tokenizer once. Every ``ok`` document yields its samples in order (sample 0, 1, ...);
samples under ``min_tokens`` stay as ``short`` rows without tokens so they can be counted; any
other document passes through as one row with sample -1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from knowlm_ray.config import ConfigError
from knowlm_ray.corpus.schema import OK, SAMPLE_SCHEMA, SHORT
from knowlm_ray.corpus.split import (
    build_samples,
    encode_documents,
    encode_sentences,
    short_tail_tokens,
    split_sentences,
)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def doc_to_sample_rows(
    doc: dict[str, Any], tokenizer: Any, max_tokens: int, min_tokens: int, tail: str = "keep", short_tail: float = 0.25
) -> Iterator[dict[str, Any]]:
    """Plain-Python core: one DOC_SCHEMA row -> SAMPLE_SCHEMA rows. ``tail`` / ``short_tail``:
    ``split.tail`` and ``split.short_tail`` (see ``split.py``)."""
    sentence_ids = None
    if doc["status"] == OK:
        sentence_ids = encode_sentences(tokenizer, split_sentences(doc["text"], doc["lang"]))
    return _sample_rows(doc, sentence_ids, tokenizer, max_tokens, min_tokens, tail, short_tail)


def _sample_rows(
    doc: dict[str, Any],
    sentence_ids: list[list[int]] | None,
    tokenizer: Any,
    max_tokens: int,
    min_tokens: int,
    tail: str,
    short_tail: float,
) -> Iterator[dict[str, Any]]:
    """SAMPLE_SCHEMA rows of one document whose sentences are already encoded (None: not ok)."""
    base = {"doc_id": doc["doc_id"], "source": doc["source"], "file": doc["file"], "line": doc["line"]}
    if doc["status"] != OK:
        yield {
            **base,
            "sample": -1,
            "input_ids": [],
            "n_tokens": 0,
            "status": doc["status"],
            "reason": doc["reason"],
            "raw": doc["raw"],
            "sentences_cut": 0,
            "tail": False,
            "backfill": 0,
        }
        return
    built = build_samples(
        sentence_ids,
        max_tokens,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tail=tail,
        short_tail=short_tail_tokens(max_tokens, short_tail),
    )
    samples = built.samples or [[]]  # text that encodes to nothing: one empty (short) sample
    last = len(samples) - 1 if built.dropped_tail is None else len(samples)
    for index, ids in enumerate(samples):
        short = len(ids) < min_tokens or not ids
        yield {
            **base,
            "sample": index,
            "input_ids": [] if short else ids,
            "n_tokens": len(ids),
            "status": SHORT if short else OK,
            "reason": f"{len(ids)} < min_tokens {min_tokens} tokens" if short else None,
            "raw": None,
            "sentences_cut": built.sentences_cut if index == 0 else 0,
            "tail": index > 0 and index == last,
            "backfill": built.backfill_tokens if index == last else 0,
        }
    if built.dropped_tail is not None:
        n = len(built.dropped_tail)
        yield {
            **base,
            "sample": len(samples),
            "input_ids": [],
            "n_tokens": n,
            "status": SHORT,
            "reason": f"short tail: {n} < {short_tail_tokens(max_tokens, short_tail)} tokens (split.tail: drop)",
            "raw": None,
            "sentences_cut": 0,
            "tail": True,
            "backfill": 0,
        }


def docs_to_samples(
    batch: pa.Table, tokenizer: Any, max_tokens: int, min_tokens: int, tail: str = "keep", short_tail: float = 0.25
) -> pa.Table:
    """DOC_SCHEMA batch -> SAMPLE_SCHEMA table, the same rows as ``doc_to_sample_rows`` per
    document, with one tokenizer call for the whole batch and the table built column-wise."""
    docs = batch.select(_DOC_COLUMNS).to_pylist()
    ok = [d for d in docs if d["status"] == OK]
    encoded = iter(encode_documents(tokenizer, [split_sentences(d["text"], d["lang"]) for d in ok]))
    cols: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    for doc in docs:
        ids = next(encoded) if doc["status"] == OK else None
        for row in _sample_rows(doc, ids, tokenizer, max_tokens, min_tokens, tail, short_tail):
            for name, values in cols.items():
                values.append(row[name])
    return pa.Table.from_pydict(cols, schema=SAMPLE_SCHEMA)


_DOC_COLUMNS = ["doc_id", "source", "file", "line", "status", "reason", "raw", "text", "lang"]
_TOKENIZERS: dict[str, Any] = {}


def cached_tokenizer(path: str):
    """One tokenizer per worker process (Ray reuses worker processes across tasks). One that
    cannot be loaded is a ConfigError naming it (``prepare_corpus`` shows it as it is)."""
    if path not in _TOKENIZERS:
        _TOKENIZERS.clear()
        try:
            _TOKENIZERS[path] = load_tokenizer(path)
        except Exception as exc:
            raise ConfigError(f"tokenizer {path!r}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return _TOKENIZERS[path]


def build_samples_batch(
    batch: pa.Table, tokenizer: str, max_tokens: int, min_tokens: int, tail: str = "keep", short_tail: float = 0.25
) -> pa.Table:
    """map_batches UDF (tasks): DOC_SCHEMA batch -> SAMPLE_SCHEMA batch, tokenizer cached per
    worker. Tasks run in the worker processes the earlier stages already started; an actor pool
    would start (and import transformers in) new processes first."""
    return docs_to_samples(batch, cached_tokenizer(tokenizer), max_tokens, min_tokens, tail, short_tail)


class SampleBuilder:
    """map_batches callable (actor pool): DOC_SCHEMA batch -> SAMPLE_SCHEMA batch."""

    def __init__(self, tokenizer: str, max_tokens: int, min_tokens: int, tail: str = "keep", short_tail: float = 0.25):
        self.tokenizer = cached_tokenizer(tokenizer)
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.tail, self.short_tail = tail, short_tail

    def __call__(self, batch: pa.Table) -> pa.Table:
        return docs_to_samples(batch, self.tokenizer, self.max_tokens, self.min_tokens, self.tail, self.short_tail)
