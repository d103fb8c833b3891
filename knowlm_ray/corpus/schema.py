"""Arrow schemas and status values shared by the corpus stages.

Every row keeps a ``status`` instead of being dropped, so one pass over the data yields both the
output and the exact per-stage counts of the manifest (Ray Data has no side outputs).
"""
from __future__ import annotations

import pyarrow as pa

OK = "ok"
MALFORMED = "malformed"  # unreadable line: bad JSON, missing / non-string text field, bad UTF-8
FILTERED = "filtered"  # failed a heuristic filter (length, symbol ratio, empty)
EXACT_DUP = "exact_dup"  # same normalised text as a document with a smaller doc_id
NEAR_DUP = "near_dup"  # reserved for MinHash near-dedup
SHORT = "short"  # a split sample shorter than min_tokens (dropped)

# One row per input document (or malformed line).
DOC_SCHEMA = pa.schema([
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
])

# One row per split sample; documents that did not reach tokenisation keep one row (sample -1).
SAMPLE_SCHEMA = pa.schema([
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
])

# What the shards hold (Arrow IPC file format).
SHARD_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("doc_id", pa.string()),
    ("source", pa.string()),
])

QUARANTINE_COLUMNS = ("file", "line", "source", "reason", "raw")

