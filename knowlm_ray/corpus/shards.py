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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.atomic import atomic_open, atomic_path
from knowlm_ray.corpus.schema import PACKED_SCHEMA, SHARD_SCHEMA
from knowlm_ray.errors import MissingPathError, UserError

SHARD_GLOB = "part-*.arrow"


# --------------------------------------------------------------------------- plain core
def plan_files(
    block_rows: list[int], rows_per_file: int, start: int = 0, stop: int | None = None
) -> list[list[tuple[int, int, int]]]:
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
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    lengths = table["input_ids"].combine_chunks().value_lengths() if table.num_rows else None
    tokens = int(pc.sum(lengths).as_py() or 0) if lengths is not None else 0
    return {"file": Path(path).name, "rows": table.num_rows, "tokens": tokens, "sha256": _sha256(path)}


def write_jsonl_file(table: pa.Table, path: str | Path, columns: list[str]) -> dict[str, Any]:
    with atomic_open(path) as fh:
        for row in table.select(columns).to_pylist():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"file": Path(path).name, "rows": table.num_rows, "sha256": _sha256(path)}


def write_part(
    kind: str, path: str, slices: list[tuple[int, int, int]], options: dict[str, Any], *blocks: pa.Table
) -> dict[str, Any]:
    """One output file from its slices of the blocks (the body of the Ray task)."""
    table = gather(slices, list(blocks))
    if kind == "arrow":
        if options.get("pack_max_tokens"):
            from knowlm_ray.corpus.pack import pack_greedy

            table = pack_greedy(table, options["pack_max_tokens"], options.get("pack_split", True))
        info = write_arrow_file(table, path)
    else:
        info = write_jsonl_file(table, path, options["columns"])
    return info


# --------------------------------------------------------------------------- Ray-facing
def table_rows(table: pa.Table) -> int:
    return table.num_rows


class FileWriter:
    """Rows of blocks that arrive in order (with their row counts) -> ``out_dir/part-NNNNN.{arrow,
    jsonl}`` files of ``rows_per_file`` rows, one Ray task per file, each started as soon as its
    rows have arrived: most files are written while the execution that makes the blocks still
    runs. ``finish`` writes the last, shorter file and returns per file ``{file, rows, tokens
    (arrow), sha256}`` in order. No rows, no files (and no ``out_dir``)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        kind: str,
        rows_per_file: int,
        columns: list[str] | None = None,
        pack_max_tokens: int | None = None,
        pack_split: bool = True,
    ):
        import ray

        self.out_dir, self.kind, self.rows_per_file = Path(out_dir), kind, rows_per_file
        self.options = {"columns": columns, "pack_max_tokens": pack_max_tokens, "pack_split": pack_split}
        self.task = ray.remote(num_cpus=1)(write_part)
        self.refs: list = []  # None once every row of the block is in a submitted file
        self.counts: list[int] = []
        self.pending: list = []
        self.rows = self.written = 0  # rows added; rows given to files
        self._held = self._held_at = 0  # the first block still referenced, and the rows before it

    def add(self, ref, rows: int) -> None:
        self.refs.append(ref)
        self.counts.append(rows)
        self.rows += rows
        while self.rows - self.written >= self.rows_per_file:
            self._submit(self.written + self.rows_per_file)

    def finish(self) -> list[dict]:
        import ray

        if self.rows > self.written:
            self._submit(self.rows)
        return ray.get(self.pending)

    def _submit(self, stop: int) -> None:
        first = self._held  # blocks before it are all in started files
        [slices] = plan_files(
            self.counts[first:], self.rows_per_file, self.written - self._held_at, stop - self._held_at
        )
        used = sorted({b for b, _, _ in slices})
        local = [(used.index(b), lo, hi) for b, lo, hi in slices]
        if not self.pending:  # the first file: out_dir only with rows
            self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"part-{len(self.pending):05d}.{'arrow' if self.kind == 'arrow' else 'jsonl'}"
        self.pending.append(
            self.task.remote(self.kind, str(path), local, self.options, *[self.refs[first + b] for b in used])
        )
        self.written = stop
        while (
            self._held < len(self.refs) and self._held_at + self.counts[self._held] <= stop
        ):  # let go of written blocks
            self._held_at += self.counts[self._held]
            self.refs[self._held] = None
            self._held += 1


# --------------------------------------------------------------------------- reading
class ShardError(UserError, ValueError):
    """Shards that cannot be read (missing, not Arrow IPC, wrong columns, checksum mismatch);
    the message names the file."""


def shard_files(path: str | Path) -> list[Path]:
    """The shard files of an output dir (or of its ``shards/`` dir), in order."""
    p = Path(path)
    if (p / "shards").is_dir():
        p = p / "shards"
    if not p.is_dir():
        raise MissingPathError(f"no shard directory at {path}")
    return sorted(p.glob(SHARD_GLOB))


def read_manifest_of(path: str | Path) -> dict | None:
    """``manifest.json`` of a corpus out_dir, given the out_dir, its ``shards/`` dir or a shard
    file; None when there is none."""
    p = Path(path)
    for d in (p, p.parent, p.parent.parent):
        f = d / "manifest.json"
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ShardError(f"{f}: not valid JSON ({exc})") from None
    return None


class ShardReader:
    """Random access to the rows of Arrow IPC shards, memory-mapped (nothing is loaded up front).

    ``ShardReader(out_dir)`` (or its ``shards/`` dir, or a list of shard files) opens every file
    with ``pa.memory_map`` and keeps, per record batch, the ``input_ids`` offsets and values as
    numpy views of the mapping plus the global row where the batch starts. Row ``i`` is then found
    in O(1): a jump table gives the batch holding row ``j * step`` (``step`` = the median batch
    size, so a table of rows / step entries), and from there at most a step or two forward
    when batches are even, as the shard writers make them. Then a slice: the OS
    pages in just the bytes it touches, so an 8 M-sample corpus costs address space, not memory
    (and no open files: a mapping outlives its file handle).

    ``reader[i]`` -> ``{"input_ids": np.ndarray (a view), "doc_id", "source"}`` plus ``"doc_starts"``
    (packed shards) and ``"labels"`` (instruction shards) when the shards have those columns.
    The hot path for training is ``input_ids(i)`` / ``labels(i)`` / ``doc_starts(i)`` (no dict,
    no Python strings). ``verify=True`` checks every file's sha256 and row count against the
    corpus ``manifest.json`` first (a full read of each file, once).
    """

    def __init__(self, path: str | Path | Sequence[str | Path], *, verify: bool = False):
        if isinstance(path, (str, Path)):
            try:
                files = shard_files(path)
            except FileNotFoundError as exc:
                raise ShardError(str(exc)) from None
            if not files:
                raise ShardError(f"no shards ({SHARD_GLOB}) in {path}")
        else:
            files = [Path(f) for f in path]
        self.files = files
        if verify:
            verify_shards(files)
        self._ids: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: (offsets, values)
        self._labels: list[tuple[np.ndarray, np.ndarray] | None] = []
        self._starts_col: list[tuple[np.ndarray, np.ndarray] | None] = []
        self._batches: list[pa.RecordBatch] = []  # keep the mapped batches (and so the maps) alive
        self._where: list[tuple[int, int]] = []  # (file index, batch index) of each batch
        first_rows: list[int] = []
        total = 0
        schema = None
        for k, f in enumerate(files):
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
            except OSError as exc:
                raise ShardError(f"{f}: cannot be read: {exc}") from None
            except pa.ArrowInvalid as exc:
                raise ShardError(f"{f}: not an Arrow IPC file: {exc}") from None
            names = reader.schema.names
            if "input_ids" not in names:
                raise ShardError(f"{f}: no 'input_ids' column (columns: {names})")
            if schema is not None and ("doc_starts" in names) != ("doc_starts" in schema.names):
                raise ShardError(f"{f}: shards mix packed (doc_starts) and unpacked rows")
            schema = schema or reader.schema
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                if batch.num_rows == 0:
                    continue
                self._batches.append(batch)
                self._ids.append(_list_views(batch.column("input_ids"), f, "input_ids"))
                self._labels.append(_list_views(batch.column("labels"), f, "labels") if "labels" in names else None)
                self._starts_col.append(
                    _list_views(batch.column("doc_starts"), f, "doc_starts") if "doc_starts" in names else None
                )
                self._where.append((k, b))
                first_rows.append(total)
                total += batch.num_rows
        self.columns: list[str] = schema.names if schema is not None else []
        self.packed = "doc_starts" in self.columns
        self._first = np.array(first_rows, dtype=np.int64)
        self._len = total
        sizes = np.diff(np.r_[self._first, total])
        self._step = max(1, int(np.median(sizes))) if len(sizes) else 1
        self._jump = np.searchsorted(self._first, np.arange(0, total, self._step), side="right") - 1
        self._sources: tuple[list[str], np.ndarray] | None = None

    def __len__(self) -> int:
        return self._len

    def _locate(self, i: int) -> tuple[int, int]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"row {i} outside 0..{self._len - 1}")
        k = int(self._jump[i // self._step])
        first, last = self._first, len(self._first) - 1
        while k < last and first[k + 1] <= i:  # the batches that start inside this step
            k += 1
        return k, i - int(first[k])

    def input_ids(self, i: int) -> np.ndarray:
        k, r = self._locate(i)
        offs, vals = self._ids[k]
        return vals[offs[r] : offs[r + 1]]

    def labels(self, i: int) -> np.ndarray | None:
        k, r = self._locate(i)
        lab = self._labels[k]
        return None if lab is None else lab[1][lab[0][r] : lab[0][r + 1]]

    def doc_starts(self, i: int) -> np.ndarray | None:
        """Offsets in row ``i`` where documents start (packed shards); None for unpacked shards."""
        k, r = self._locate(i)
        ds = self._starts_col[k]
        return None if ds is None else ds[1][ds[0][r] : ds[0][r + 1]]

    def source(self, i: int) -> str | None:
        k, r = self._locate(i)
        batch = self._batches[k]
        return batch.column("source")[r].as_py() if "source" in batch.schema.names else None

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, r = self._locate(i)
        batch = self._batches[k]
        offs, vals = self._ids[k]
        row: dict[str, Any] = {"input_ids": vals[offs[r] : offs[r + 1]]}
        for name in ("doc_id", "source"):
            if name in batch.schema.names:
                row[name] = batch.column(name)[r].as_py()
        for name, views in (("doc_starts", self._starts_col[k]), ("labels", self._labels[k])):
            if views is not None:
                row[name] = views[1][views[0][r] : views[0][r + 1]]
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._len):
            yield self[i]

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, pa.RecordBatch]]:
        """Per record batch, in order: (first global row, input_ids offsets, values, the batch);
        for whole-corpus passes (export, statistics) without a Python object per row."""
        for k, batch in enumerate(self._batches):
            offs, vals = self._ids[k]
            yield int(self._first[k]), offs, vals, batch

    def lengths(self) -> np.ndarray:
        """Tokens of every row (int64; from the offsets alone, no token is read)."""
        if not self._ids:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(offs).astype(np.int64) for offs, _ in self._ids])

    def sources(self) -> tuple[list[str], np.ndarray]:
        """(source names in order of first appearance, per-row index into them), read once."""
        if self._sources is None:
            names: dict[str, int] = {}
            codes = np.empty(self._len, dtype=np.int32)
            for k, batch in enumerate(self._batches):
                if "source" not in batch.schema.names:
                    raise ShardError(f"{self.files[self._where[k][0]]}: no 'source' column")
                col = batch.column("source").dictionary_encode()
                remap = np.array(
                    [names.setdefault(str(v), len(names)) for v in col.dictionary.to_pylist()], dtype=np.int32
                )
                start = int(self._first[k])
                codes[start : start + batch.num_rows] = remap[col.indices.to_numpy(zero_copy_only=False)]
            self._sources = (list(names), codes)
        return self._sources


def _list_views(col: pa.Array, f: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list<int> column as numpy views of the mapped buffers."""
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise ShardError(f"{f}: column {name!r} is {col.type}, not a list of integers")
    if not pa.types.is_integer(col.type.value_type):
        raise ShardError(f"{f}: column {name!r} is {col.type}, not a list of integers")
    if col.null_count or col.values.null_count:
        raise ShardError(f"{f}: column {name!r} has nulls")
    return col.offsets.to_numpy(), col.values.to_numpy()


def verify_shards(files: Sequence[str | Path], manifest: dict | None = None) -> None:
    """Check each shard's sha256 and row count against the corpus manifest's ``shards`` list."""
    files = [Path(f) for f in files]
    if not files:
        return
    manifest = manifest if manifest is not None else read_manifest_of(files[0].parent)
    entries = (manifest or {}).get("shards")
    if not isinstance(entries, list):
        raise ShardError(f"cannot verify {files[0].parent}: no manifest.json with a 'shards' list next to it")
    by_name = {Path(e["file"]).name: e for e in entries if isinstance(e, dict) and "file" in e}
    for f in files:
        entry = by_name.get(f.name)
        if entry is None:
            raise ShardError(f"{f}: not listed in the manifest")
        digest = _sha256(f)
        if digest != entry.get("sha256"):
            raise ShardError(f"{f}: sha256 {digest} does not match the manifest's {entry.get('sha256')}")
        if "rows" in entry:
            reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
            n = sum(reader.get_batch(b).num_rows for b in range(reader.num_record_batches))
            if n != entry["rows"]:
                raise ShardError(f"{f}: {n} rows, the manifest says {entry['rows']}")


def read_shards(path: str | Path) -> pa.Table:
    """All shards as one table, memory-mapped (zero copy: rows are read from disk on access)."""
    tables = [pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all() for f in shard_files(path)]
    return pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()


def iter_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows in shard order: ``{"input_ids": np.ndarray[int32] (a view), "doc_id", "source"}``
    (+ ``"doc_starts"``, a list of ints, in packed shards)."""
    if not shard_files(path):
        return
    for row in ShardReader(path):
        if "doc_starts" in row:
            row["doc_starts"] = row["doc_starts"].tolist()
        yield row
