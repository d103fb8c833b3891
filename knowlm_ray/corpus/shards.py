"""Deterministic shard writing and reading.

Shards are Arrow IPC **file** format (``pa.ipc.new_file``; read with ``pa.ipc.open_file`` or
``pyarrow.dataset.dataset(path, format="ipc")``, not HF ``datasets.Dataset.from_file``, which
wants the stream format), columns ``input_ids: list<int32>``, ``doc_id``, ``source``.

Why not a Ray Data datasink: file names and row groups must not depend on block sizes or task
order, or a re-run would not be byte-identical. So the samples are sorted by
``(doc_id, sample)`` with Ray Data, the sorted blocks' row counts fix global offsets, and the
stream is cut into files of exactly ``rows_per_file`` rows (the last may be shorter). One Ray
task per file fetches just the block slices it needs, concatenates them into one chunk and
writes ``part-NNNNN``; nothing goes through the driver but row counts and file summaries.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.corpus.schema import PACKED_SCHEMA, SHARD_SCHEMA

SHARD_GLOB = "part-*.arrow"


# --------------------------------------------------------------------------- plain core
def plan_files(block_rows: list[int], rows_per_file: int, start: int = 0,
               stop: int | None = None) -> list[list[tuple[int, int, int]]]:
    """Cut global rows ``[start, stop)`` of blocks of the given sizes into files of
    ``rows_per_file`` rows. Returns per file a list of ``(block_index, start, stop)`` slices.
    """
    stop = sum(block_rows) if stop is None else stop
    plan: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    filled = offset = 0
    for block, n in enumerate(block_rows):
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        offset += n
        while lo < hi:
            take = min(hi - lo, rows_per_file - filled)
            current.append((block, lo, lo + take))
            filled += take
            lo += take
            if filled == rows_per_file:
                plan.append(current)
                current, filled = [], 0
    if current:
        plan.append(current)
    return plan


def gather(slices: list[tuple[int, int, int]], blocks: list[pa.Table]) -> pa.Table:
    tables = [blocks[b].slice(start, stop - start) for b, start, stop in slices]
    return pa.concat_tables(tables).combine_chunks()  # one chunk: bytes independent of blocks


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_arrow_file(table: pa.Table, path: str | Path) -> dict[str, Any]:
    """Write SHARD_SCHEMA (or, packed, PACKED_SCHEMA) rows as one Arrow IPC file (temp name,
    then rename)."""
    schema = PACKED_SCHEMA if "doc_starts" in table.column_names else SHARD_SCHEMA
    table = table.select(schema.names).cast(schema).combine_chunks()
    # take() copies into fresh buffers (offsets from 0, no validity bitmap without nulls): the bytes
    # must not depend on where in a sorted block this file's rows were sliced from
    table = table.take(pa.array(range(table.num_rows), pa.int64())) if table.num_rows else table
    tmp = f"{path}.tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    lengths = table["input_ids"].combine_chunks().value_lengths() if table.num_rows else None
    tokens = int(pc.sum(lengths).as_py() or 0) if lengths is not None else 0
    return {"file": Path(path).name, "rows": table.num_rows, "tokens": tokens, "sha256": _sha256(path)}


def write_jsonl_file(table: pa.Table, path: str | Path, columns: list[str]) -> dict[str, Any]:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in table.select(columns).to_pylist():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return {"file": Path(path).name, "rows": table.num_rows, "sha256": _sha256(path)}


def write_part(kind: str, path: str, slices: list[tuple[int, int, int]], options: dict[str, Any],
               *blocks: pa.Table) -> dict[str, Any]:
    """One output file from its slices of the sorted blocks (the body of the Ray task)."""
    table = gather(slices, list(blocks))
    keys = options["order_by"]
    first = [table[k][0].as_py() for k in keys]
    last = [table[k][-1].as_py() for k in keys]
    if kind == "arrow":
        if options.get("pack_max_tokens"):
            from knowlm_ray.corpus.pack import pack_greedy

            table = pack_greedy(table, options["pack_max_tokens"], options.get("pack_split", True))
        info = write_arrow_file(table, path)
    else:
        info = write_jsonl_file(table, path, options["columns"])
    return {**info, "first": first, "last": last}


# --------------------------------------------------------------------------- Ray-facing
def sort_to_blocks(ds, order_by: list[str]) -> tuple[list, list[int]]:
    """Sort ``ds`` (Ray Data) and return its blocks' refs, in order, with their row counts."""
    import ray

    refs = ds.sort(order_by).to_arrow_refs()
    num_rows = ray.remote(num_cpus=0)(_num_rows)
    return refs, ray.get([num_rows.remote(r) for r in refs])


def _num_rows(table: pa.Table) -> int:
    return table.num_rows


def write_files(refs: list, counts: list[int], out_dir: str | Path, *, kind: str, rows_per_file: int,
                order_by: list[str], start: int = 0, stop: int | None = None,
                columns: list[str] | None = None, pack_max_tokens: int | None = None,
                pack_split: bool = True) -> list[dict]:
    """Write sorted rows ``[start, stop)`` as ``out_dir/part-NNNNN.{arrow,jsonl}``, one Ray task
    per file. Returns per file ``{file, rows, tokens (arrow), sha256, first, last}`` in order.
    """
    import ray

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=1)(write_part)
    options = {"order_by": order_by, "columns": columns, "pack_max_tokens": pack_max_tokens,
               "pack_split": pack_split}
    ext = "arrow" if kind == "arrow" else "jsonl"
    pending = []
    for i, slices in enumerate(plan_files(counts, rows_per_file, start, stop)):
        used = sorted({b for b, _, _ in slices})
        local = [(used.index(b), lo, hi) for b, lo, hi in slices]
        pending.append(task.remote(kind, str(out_dir / f"part-{i:05d}.{ext}"), local, options,
                                   *[refs[b] for b in used]))
    infos = ray.get(pending)
    for a, b in zip(infos, infos[1:]):  # cheap guard on the one thing determinism rests on
        if a["last"] > b["first"]:
            raise RuntimeError(f"sorted blocks came back out of order ({a['file']} ends at "
                               f"{a['last']}, {b['file']} starts at {b['first']})")
    return infos


# --------------------------------------------------------------------------- reading
def shard_files(path: str | Path) -> list[Path]:
    """The shard files of an output dir (or of its ``shards/`` dir), in order."""
    p = Path(path)
    if (p / "shards").is_dir():
        p = p / "shards"
    if not p.is_dir():
        raise FileNotFoundError(f"no shard directory at {path}")
    return sorted(p.glob(SHARD_GLOB))


def read_shards(path: str | Path) -> pa.Table:
    """All shards as one table, memory-mapped (zero copy: rows are read from disk on access)."""
    tables = [pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all() for f in shard_files(path)]
    return pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()


def iter_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows in shard order: ``{"input_ids": np.ndarray[int32] (a view), "doc_id", "source"}``
    (+ ``"doc_starts"``, a list of ints, in packed shards)."""
    for f in shard_files(path):
        reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids = batch.column("input_ids")
            offsets = ids.offsets.to_numpy()
            values = ids.values.to_numpy(zero_copy_only=False)
            doc_ids = batch.column("doc_id").to_pylist()
            sources = batch.column("source").to_pylist()
            starts = batch.column("doc_starts").to_pylist() if "doc_starts" in batch.schema.names else None
            for j in range(batch.num_rows):
                row = {"input_ids": values[offsets[j]:offsets[j + 1]], "doc_id": doc_ids[j], "source": sources[j]}
                if starts is not None:
                    row["doc_starts"] = starts[j]
                yield row

