"""Export corpus shards as a Megatron-LM indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

The format is Megatron-LM's ``MMapIndexedDataset`` (megatron/core/datasets/indexed_dataset.py),
so Megatron-LM / Megatron-DeepSpeed / NeMo can train on a corpus prepared here:

* ``.bin``: every sequence's tokens back to back, little-endian, ``uint16`` when the vocabulary has
  fewer than 65,500 entries (Megatron's ``best_fitting_dtype``; KnowLM's own .bin is uint16 too),
  else ``int32``.
* ``.idx``: ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` 1, dtype code ``<B`` (4 int32, 8 uint16),
  sequence count ``<Q``, document-index count ``<Q``, then ``int32`` sequence lengths, ``int64``
  byte pointers into ``.bin``, ``int64`` document indices (``[0, end_1, end_2, ...]``: document d is
  sequences ``[doc[d], doc[d+1])``).

One shard row is one sequence. Unpacked corpora keep their documents: consecutive rows with the
same ``doc_id`` (a document's samples, in order) form one Megatron document. Packed rows hold
several documents each, so every packed row is its own document. Both files are written to temp
names and renamed; the shards are streamed (memory-mapped), never loaded whole.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from knowlm_ray.atomic import atomic_path
from knowlm_ray.corpus.shards import ShardReader
from knowlm_ray.errors import InputError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def best_fitting_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def export_megatron(corpus: str | Path, out_prefix: str | Path, vocab_size: int | None = None) -> dict[str, Any]:
    """Write ``out_prefix.bin`` / ``.idx`` from the corpus shards; returns a summary.

    ``vocab_size`` picks the token dtype; None: the largest token id in the data + 1.
    """
    reader = ShardReader(corpus)
    max_id = max(
        (int(vals[offs[0] : offs[-1]].max()) for _, offs, vals, _ in reader.chunks() if offs[-1] > offs[0]), default=0
    )
    if vocab_size is None:
        vocab_size = max_id + 1
    elif max_id >= vocab_size:
        raise InputError(f"{corpus}: token id {max_id} does not fit vocab_size {vocab_size}")
    dtype = best_fitting_dtype(vocab_size)
    out_prefix = Path(out_prefix)
    bin_path, idx_path = Path(f"{out_prefix}.bin"), Path(f"{out_prefix}.idx")
    lengths: list[np.ndarray] = []
    doc_ends: list[int] = []
    last_doc = None
    # The inner context exits first: .bin is renamed into place, then the .idx that points into it.
    with atomic_path(idx_path) as tmp_idx, atomic_path(bin_path) as tmp_bin:
        with open(tmp_bin, "wb") as fh:
            for first, offs, vals, batch in reader.chunks():
                vals[offs[0] : offs[-1]].astype(dtype.newbyteorder("<"), copy=False).tofile(fh)
                lengths.append(np.diff(offs).astype(np.int32))
                n = batch.num_rows
                if reader.packed or "doc_id" not in batch.schema.names:
                    doc_ends.extend(range(first + 1, first + n + 1))
                    continue
                ids = batch.column("doc_id").to_pylist()
                for r, doc in enumerate(ids):  # a new doc_id closes the previous document
                    if last_doc is not None and doc != last_doc:
                        doc_ends.append(first + r)
                    last_doc = doc
            if last_doc is not None:
                doc_ends.append(len(reader))
        seq_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(seq_lengths), dtype=np.int64)
        np.cumsum(seq_lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
        doc_index = np.array([0, *doc_ends], dtype=np.int64)
        with open(tmp_idx, "wb") as fh:
            fh.write(INDEX_HEADER)
            fh.write(struct.pack("<Q", INDEX_VERSION))
            fh.write(struct.pack("<B", DTYPE_CODES[dtype]))
            fh.write(struct.pack("<Q", len(seq_lengths)))
            fh.write(struct.pack("<Q", len(doc_index)))
            fh.write(seq_lengths.astype("<i4").tobytes(order="C"))
            fh.write(pointers.astype("<i8").tobytes(order="C"))
            fh.write(doc_index.astype("<i8").tobytes(order="C"))
    return {
        "bin": str(bin_path),
        "idx": str(idx_path),
        "sequences": int(len(seq_lengths)),
        "documents": int(len(doc_index) - 1),
        "tokens": int(seq_lengths.sum(dtype=np.int64)),
        "dtype": dtype.name,
        "vocab_size": int(vocab_size),
    }
