"""Arrow schemas and status values shared by the corpus stages.

Every row keeps a ``status`` instead of being dropped, so one pass over the data yields both the
output and the exact per-stage counts of the manifest (Ray Data has no side outputs).
"""

from __future__ import annotations

import pyarrow as pa

OK = "ok"
MALFORMED = "malformed"  # unreadable line: bad JSON, missing / non-string text field, bad UTF-8
FILTERED = "filtered"  # failed a heuristic filter; reason "<filter>: <detail>"
EXACT_DUP = "exact_dup"  # same normalised text as a document with a smaller doc_id
NEAR_DUP = "near_dup"  # MinHash near-duplicate of a document with a smaller doc_id
SHORT = "short"  # a split sample shorter than min_tokens, or a dropped short tail
CAPPED = "capped"  # a sample of a document over its source's mix cap (corpus/mix.py)

# One row per input document (or malformed line).
DOC_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("text", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("key", pa.string()),  # exact-dedup key (hash of the normalised text); unique for non-ok rows
    ]
)

# One row per split sample; documents that did not reach tokenisation keep one row (sample -1).
SAMPLE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("sample", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        ("n_tokens", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("sentences_cut", pa.int64()),  # on a document's first row only
        ("tail", pa.bool_()),  # last sample of a document that needed more than one
        ("backfill", pa.int64()),  # tokens a back-filled tail repeats from earlier samples (split.tail)
    ]
)

# What the shards hold (Arrow IPC file format).
SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("doc_id", pa.string()),
        ("source", pa.string()),
    ]
)

# ``pack.mode: greedy`` shards: + the offsets where segments (documents) start in each row.
PACKED_SCHEMA = pa.schema([*SHARD_SCHEMA, ("doc_starts", pa.list_(pa.int32()))])

QUARANTINE_COLUMNS = ("file", "line", "source", "reason", "raw")
# out_dir/dropped/*.jsonl: why each document (or short sample) did not reach the shards.
DROPPED_COLUMNS = ("doc_id", "source", "file", "line", "sample", "status", "reason")


def with_columns(table: pa.Table, **columns: pa.Array) -> pa.Table:
    """``table`` with the named columns replaced (same positions)."""
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table
