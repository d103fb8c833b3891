"""``pack.mode: greedy``: concatenate consecutive samples into rows of at most ``max_tokens``.

Samples are whole (never cut), so document boundaries inside a row stay visible through the
BOS/EOS tokens the split put on each document's first/last sample. A row never mixes sources
(so its ``source`` column stays true); its ``doc_id`` is the first sample's. Packing runs inside
each shard writer over that shard's fixed slice of the sorted samples, which keeps it
deterministic; a shard therefore holds at most ``rows_per_shard`` rows.
"""
from __future__ import annotations

import pyarrow as pa

from knowlm_ray.corpus.schema import SHARD_SCHEMA


def pack_greedy(table: pa.Table, max_tokens: int) -> pa.Table:
    """Plain-Python core: SHARD_SCHEMA rows in order -> packed SHARD_SCHEMA rows."""
    out: list[dict] = []
    current: dict | None = None
    for row in table.select(["input_ids", "doc_id", "source"]).to_pylist():
        ids = row["input_ids"]
        if (current is not None and current["source"] == row["source"]
                and len(current["input_ids"]) + len(ids) <= max_tokens):
            current["input_ids"].extend(ids)
            continue
        if current is not None:
            out.append(current)
        current = {"input_ids": list(ids), "doc_id": row["doc_id"], "source": row["source"]}
    if current is not None:
        out.append(current)
    return pa.Table.from_pylist(out, schema=SHARD_SCHEMA)
