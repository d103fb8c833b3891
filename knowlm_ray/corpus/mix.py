"""Per-source caps and shares (``mix`` in the corpus config), applied after dedup and tokenising.

Each document gets a 64-bit key, a hash of (seed, doc_id); within a source, documents are taken in
key order until the cap (documents, or tokens) is reached. So the kept set is a seeded, unbiased
sample of the source, the same whatever the partitioning or ``num_cpus``, and a bigger cap keeps a
superset. The cut is a key threshold per source, so marking rows needs no per-document state:
a row whose document's key is >= its source's threshold becomes ``capped`` (counted in
``stages.capped``, listed in ``dropped/``). ``shares`` turn into caps: the largest total with
exactly those proportions that every source can supply.

Only per-document (source, key, tokens) triples reach the driver (17 bytes a document: ~140 MB
for KnowLM's 8 M samples), never text or tokens.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.config import MixConfig
from knowlm_ray.corpus.schema import CAPPED, OK, SHORT, with_columns

SUMMARY_SCHEMA = pa.schema([("source", pa.string()), ("key", pa.uint64()), ("tokens", pa.int64())])
NO_CUT = (1 << 64) - 1  # threshold that keeps every document (keys are below 2**64 - 1)


def doc_key(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest(), "little") & (
        (1 << 64) - 2
    )  # never NO_CUT


def _keys(batch: pa.Table, seed: int) -> np.ndarray:
    return np.fromiter((doc_key(seed, d) for d in batch["doc_id"].to_pylist()), dtype=np.uint64, count=batch.num_rows)


def summary_batch(batch: pa.Table, seed: int) -> pa.Table:
    """map_batches UDF: SAMPLE_SCHEMA rows -> per (source, document key) the tokens of its ok
    samples, for every document that reached tokenising (ok or short rows). A document split
    over batches gives several rows; the driver sums them."""
    live = pc.or_(pc.equal(batch["status"], OK), pc.equal(batch["status"], SHORT))
    rows = batch.filter(live)
    tokens = pc.if_else(pc.equal(rows["status"], OK), rows["n_tokens"], pa.scalar(0, pa.int64()))
    t = pa.table({"source": rows["source"], "key": pa.array(_keys(rows, seed), pa.uint64()), "tokens": tokens})
    g = t.group_by(["source", "key"]).aggregate([("tokens", "sum")]).rename_columns(["source", "key", "tokens"])
    return g.select(SUMMARY_SCHEMA.names).cast(SUMMARY_SCHEMA)


def plan(summary: pa.Table, mix: MixConfig) -> tuple[dict[str, int], dict[str, Any]]:
    """Per-document summary rows -> ({source: key threshold}, the manifest's ``mix`` record)."""
    summary = (
        summary.group_by(["source", "key"]).aggregate([("tokens", "sum")]).rename_columns(["source", "key", "tokens"])
    )
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sorted(set(summary["source"].to_pylist())):
        part = summary.filter(pc.equal(summary["source"], source))
        keys = part["key"].to_numpy()
        order = np.argsort(keys, kind="stable")
        per[source] = (keys[order], part["tokens"].to_numpy()[order].astype(np.int64))
    size = {s: (len(k) if mix.unit == "documents" else int(t.sum())) for s, (k, t) in per.items()}
    caps: dict[str, int] = {s: int(c) for s, c in mix.caps.items()}
    if mix.shares:
        total = sum(mix.shares.values())
        shares = {s: v / total for s, v in mix.shares.items()}
        # the largest total T with T * share <= what each source has
        t_max = min((size.get(s, 0) / p for s, p in shares.items() if p > 0), default=0.0)
        for s, p in shares.items():
            caps[s] = min(caps.get(s, 1 << 62), int(t_max * p + 1e-9))
    thresholds: dict[str, int] = {}
    record: dict[str, Any] = {"unit": mix.unit, "caps": dict(mix.caps), "shares": dict(mix.shares), "sources": {}}
    for s, (keys, tokens) in per.items():
        cap = caps.get(s)
        if cap is None:
            keep = len(keys)
        elif mix.unit == "documents":
            keep = min(cap, len(keys))
        else:
            keep = int(np.searchsorted(np.cumsum(tokens), cap, side="right"))
        thresholds[s] = int(keys[keep]) if keep < len(keys) else NO_CUT
        kept = keys < np.uint64(thresholds[s])  # equal keys at the cut (a 2**-64 event) both go
        record["sources"][s] = {
            "cap": cap,
            "documents_before": len(keys),
            "documents_after": int(kept.sum()),
            "tokens_before": int(tokens.sum()),
            "tokens_after": int(tokens[kept].sum()),
        }
    for s in caps:
        if s not in per:  # a source with nothing left after dedup
            record["sources"][s] = {
                "cap": caps[s],
                "documents_before": 0,
                "documents_after": 0,
                "tokens_before": 0,
                "tokens_after": 0,
            }
    return thresholds, record


def mark_batch(batch: pa.Table, thresholds: dict[str, int], seed: int, unit: str) -> pa.Table:
    """map_batches UDF: rows of documents past their source's cut -> status ``capped``."""
    live = pc.or_(pc.equal(batch["status"], OK), pc.equal(batch["status"], SHORT)).to_numpy(zero_copy_only=False)
    if not live.any():
        return batch
    cut = np.array([thresholds.get(s, NO_CUT) for s in batch["source"].to_pylist()], dtype=np.uint64)
    capped = live & (_keys(batch, seed) >= cut)
    if not capped.any():
        return batch
    mask = pa.array(capped)
    status = pc.if_else(mask, CAPPED, batch["status"])
    reason = pc.if_else(mask, pa.scalar(f"mix: over the source's {unit} cap"), batch["reason"])
    ids = pc.if_else(mask, pa.scalar([], batch.schema.field("input_ids").type), batch["input_ids"])
    return with_columns(batch, status=status, reason=reason, input_ids=ids)


def apply_mix(samples, mix: MixConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """Ray Data: tokenised samples -> (samples with capped rows marked, manifest ``mix`` record).
    ``samples`` is materialised once (it is read twice: for the summary, then for the output)."""
    import ray

    samples = samples.materialize()
    refs = samples.map_batches(summary_batch, batch_format="pyarrow", fn_kwargs={"seed": seed}).to_arrow_refs()
    parts = [t for t in ray.get(refs) if t.num_rows]
    summary = pa.concat_tables(parts).cast(SUMMARY_SCHEMA) if parts else SUMMARY_SCHEMA.empty_table()
    thresholds, record = plan(summary, mix)
    marked = samples.map_batches(
        mark_batch, batch_format="pyarrow", fn_kwargs={"thresholds": thresholds, "seed": seed, "unit": mix.unit}
    )
    return marked, record
