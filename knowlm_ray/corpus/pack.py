"""``pack.mode: greedy``: concatenate consecutive samples into rows of ``max_tokens`` tokens,
recording where each document starts so training can restart positions and attention per
document.

Packed shards carry one more column, ``doc_starts: list<int32>``: the offsets in the row at which
a segment begins. It always starts with 0 (a row may begin inside a document continued from the
previous row); every later entry is where a new document's first token (its BOS) sits. So the
segment lengths are ``diff(doc_starts + [len(input_ids)])``, ``position_ids`` restart at 0 at every
entry, and a block-diagonal attention mask (or flash-attention ``cu_seqlens``) follows directly.

* ``split_samples: true`` (default): the token stream is cut every ``max_tokens`` tokens, so every
  row has exactly ``max_tokens`` tokens except the last row of a source within a shard (fill ~100%).
  A sample may continue in the next row.
* ``split_samples: false``: samples stay whole; a row takes samples while they fit (rows of at
  most ``max_tokens``).

A row never mixes sources (so its ``source`` column stays true); its ``doc_id`` is the document of
its first token. Packing runs inside each shard writer over that shard's fixed slice of the
sorted samples, which keeps it deterministic; a shard therefore holds at most ``rows_per_shard``
rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from knowlm_ray.corpus.schema import PACKED_SCHEMA


def _runs(values: list) -> list[tuple[int, int]]:
    """[start, stop) ranges of equal consecutive values."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            out.append((start, i))
            start = i
    return out


def pack_greedy(table: pa.Table, max_tokens: int, split_samples: bool = True) -> pa.Table:
    """Plain-Python core: SHARD_SCHEMA rows in (doc_id, sample) order -> PACKED_SCHEMA rows."""
    cols: dict[str, list] = {"input_ids": [], "doc_id": [], "source": [], "doc_starts": []}
    if table.num_rows == 0:
        return pa.table(cols, schema=PACKED_SCHEMA)
    ids = table["input_ids"].combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    values = ids.values.to_numpy(zero_copy_only=False)
    doc_ids = table["doc_id"].to_pylist()
    sources = table["source"].to_pylist()
    new_doc = [i == 0 or doc_ids[i] != doc_ids[i - 1] for i in range(len(doc_ids))]
    for r0, r1 in _runs(sources):
        if split_samples:
            _pack_stream(cols, values, offsets, doc_ids, new_doc, sources[r0], r0, r1, max_tokens)
        else:
            _pack_whole(cols, values, offsets, doc_ids, new_doc, sources[r0], r0, r1, max_tokens)
    return pa.table(cols, schema=PACKED_SCHEMA)


def _pack_stream(cols, values, offsets, doc_ids, new_doc, source, r0, r1, max_tokens) -> None:
    base = offsets[r0]
    flat = values[base : offsets[r1]]
    row_starts = offsets[r0:r1] - base  # where each sample begins in the stream
    starts = np.array([row_starts[i - r0] for i in range(r0, r1) if new_doc[i]], dtype=np.int64)
    for start in range(0, len(flat), max_tokens):
        stop = min(start + max_tokens, len(flat))
        inside = starts[(starts > start) & (starts < stop)] - start
        first_row = r0 + int(np.searchsorted(row_starts, start, side="right")) - 1
        cols["input_ids"].append(flat[start:stop].tolist())
        cols["doc_id"].append(doc_ids[first_row])
        cols["source"].append(source)
        cols["doc_starts"].append([0, *inside.tolist()])


def _pack_whole(cols, values, offsets, doc_ids, new_doc, source, r0, r1, max_tokens) -> None:
    current: list[int] | None = None
    starts: list[int] = []
    for i in range(r0, r1):
        sample = values[offsets[i] : offsets[i + 1]].tolist()
        if current is not None and len(current) + len(sample) <= max_tokens:
            if new_doc[i]:
                starts.append(len(current))
            current.extend(sample)
            continue
        if current is not None:
            cols["input_ids"].append(current)
            cols["doc_starts"].append(starts)
        current, starts = sample, [0]
        cols["doc_id"].append(doc_ids[i])
        cols["source"].append(source)
    if current is not None:
        cols["input_ids"].append(current)
        cols["doc_starts"].append(starts)


def segment_lengths(doc_starts: list[int], n_tokens: int) -> list[int]:
    """Lengths of a packed row's segments (for position_ids / cu_seqlens)."""
    bounds = list(doc_starts) + [n_tokens]
    return [b - a for a, b in zip(bounds, bounds[1:]) if b > a]


def position_ids(doc_starts: list[int], n_tokens: int) -> np.ndarray:
    """Positions restarting at 0 at every segment start."""
    return (
        np.concatenate([np.arange(n, dtype=np.int64) for n in segment_lengths(doc_starts, n_tokens)])
        if n_tokens
        else np.zeros(0, dtype=np.int64)
    )
