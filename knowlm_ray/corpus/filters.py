"""Minimal quality filters (length bounds, symbol ratio) and the exact-dedup key.

Filters only look at ``ok`` rows and turn them into ``filtered`` ones with a reason; the text is
dropped from such rows so the later shuffle carries no dead weight. The dedup key is a hash of
the NFKC-normalised, whitespace-collapsed text: the text itself is tokenised unnormalised (NFKC
would turn Chinese full-width punctuation ，！？ into ASCII).
"""
from __future__ import annotations

import hashlib
import unicodedata

import pyarrow as pa

from knowlm_ray.config import FilterConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, FILTERED, OK

# Punctuation of ordinary prose and code that is not "junk"; everything else that is neither a
# letter, a digit nor whitespace counts as a symbol (@#$%^&*=<>{}|~ box drawing, emoji, ...).
_PROSE = set(".,;:!?'\"()-_/，。、；：！？“”‘’（）《》〈〉「」『』【】—…·")


def symbol_ratio(text: str) -> float:
    """Share of non-whitespace characters that are neither alphanumeric nor prose punctuation."""
    total = symbols = 0
    for ch in text:
        if ch.isspace():
            continue
        total += 1
        if not ch.isalnum() and ch not in _PROSE:
            symbols += 1
    return symbols / total if total else 0.0


def filter_reason(text: str, cfg: FilterConfig) -> str | None:
    """Why ``text`` is rejected, or None to keep it."""
    n = len(text)
    if n == 0:
        return "empty"
    if n < cfg.min_chars:
        return f"too short ({n} < {cfg.min_chars} chars)"
    if n > cfg.max_chars:
        return f"too long ({n} > {cfg.max_chars} chars)"
    ratio = symbol_ratio(text)
    if ratio > cfg.max_symbol_ratio:
        return f"symbol ratio {ratio:.2f} > {cfg.max_symbol_ratio}"
    return None


def normalise_for_dedup(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def dedup_key(text: str) -> str:
    return hashlib.blake2b(normalise_for_dedup(text).encode("utf-8"), digest_size=16).hexdigest()


def annotate_batch(batch: pa.Table, filters: dict) -> pa.Table:
    """map_batches UDF: apply the filters to ok rows and give them their dedup key."""
    cfg = FilterConfig.model_validate(filters)
    rows = batch.to_pylist()
    for row in rows:
        if row["status"] != OK:
            continue
        reason = filter_reason(row["text"], cfg)
        if reason is None:
            row["key"] = dedup_key(row["text"])
        else:
            row.update(status=FILTERED, reason=reason, text="", key="~" + row["doc_id"])
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
