"""Readers: jsonl, plain text (one document per line), parquet (one per row) and whole files
(one document per file, e.g. a code tree by glob); jsonl, text and files may be gzip (``.gz``) or
zstd (``.zst``/``.zstd``) compressed, recognised by extension and decompressed while streaming.
Each document's text then goes through its source's converter (``text.convert``: whitespace,
full-width folding, wiki/baike markup).

Files are listed on the driver (paths only) and read in parallel tasks of about ``CHUNK_BYTES``
of input (``plan_reads``): an uncompressed jsonl or text file is cut into byte ranges, each range
owning the lines that start in it; compressed files (a stream cannot be entered mid-way), parquet
and whole files are read whole, small ones several to a task. Each document gets a stable
``doc_id`` = ``source/relative-file:line`` (line zero-padded, so string order is file order;
whole files have no line part). A line that cannot be read as a document (bad JSON or JSON nested
deeper than the parser goes, not an object, a missing or non-string text field, invalid UTF-8
bytes or an unpaired surrogate escape) is not fatal: it becomes a
``malformed`` row carrying the reason and the raw line (first ``MAX_RAW`` characters), later
written to ``out_dir/quarantine/``. Blank lines are not documents and are not counted.
"""

from __future__ import annotations

import bisect
import gzip
import io
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from knowlm_ray.config import ConfigError, SourceConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, MALFORMED, OK
from knowlm_ray.corpus.text import convert
from knowlm_ray.errors import MissingPathError

MAX_RAW = 4096
BATCH_ROWS = 2048  # rows per yielded block while streaming a large file
MAX_READ_TASKS = 4096
# Input bytes per read task (the last few get less: read_task_sizes). The filters and signatures
# run in the same task; why 8 MiB (Ray Data's poll between tasks): BENCHMARKS.md, Corpus pipeline.
CHUNK_BYTES = 8 * 2**20
# Up to this many bytes of cut files, the driver counts their newlines itself (_newline_counts).
DRIVER_COUNT_BYTES = 2**30
# A read task's pieces as a Ray Data block (explicit: a task of whole files has no ``end`` values)
PIECE_SCHEMA = pa.schema(
    [
        ("input", pa.int64()),
        ("path", pa.string()),
        ("rel", pa.string()),
        ("display", pa.string()),
        ("size", pa.int64()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("line0", pa.int64()),
    ]
)


def list_input_files(inputs: list[SourceConfig]) -> list[dict[str, Any]]:
    """One entry per file to read, in a fixed order. Raises on a missing path or an empty glob."""
    files: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for index, src in enumerate(inputs):
        root = Path(src.path).expanduser()
        if root.is_file():
            found = [(root, root.name)]
        elif root.is_dir():
            found = sorted(
                ((p, p.relative_to(root).as_posix()) for p in root.glob(src.glob) if p.is_file()), key=lambda x: x[1]
            )
            if not found:
                raise MissingPathError(
                    f"input {index} (source {src.source!r}): no files match glob {src.glob!r} under {src.path}"
                )
        else:
            raise MissingPathError(f"input {index} (source {src.source!r}): path not found: {src.path}")
        for path, rel in found:
            if (src.source, rel) in seen:  # two inputs would produce the same doc_ids
                raise ConfigError(
                    f"input {index} (source {src.source!r}): {rel} clashes with "
                    f"{seen[(src.source, rel)]}; give the inputs different source names"
                )
            seen[(src.source, rel)] = str(path)
            display = src.path if root.is_file() else f"{src.path.rstrip('/')}/{rel}"
            files.append(
                {
                    "input": index,
                    "path": str(path.resolve()),
                    "rel": rel,
                    "display": display,
                    "size": path.stat().st_size,
                }
            )
    return files


def splittable(entry: dict[str, Any], src: SourceConfig) -> bool:
    """Can the file be read in byte ranges? Lines of an uncompressed jsonl or text file."""
    return src.format in ("jsonl", "text") and compression(entry["path"]) is None


def count_newlines(path: str, ranges: list[tuple[int, int]], block: int = 1 << 20) -> list[int]:
    """Newlines in each byte range [start, end) of the file."""
    counts = []
    with open(path, "rb") as fh:
        for start, end in ranges:
            fh.seek(start)
            n, left = 0, end - start
            while left > 0:
                data = fh.read(min(block, left))
                if not data:
                    break
                n += data.count(b"\n")
                left -= len(data)
            counts.append(n)
    return counts


def read_task_sizes(total: int, chunk: int, workers: int) -> list[int]:
    """Input bytes of each read task, in order, summing to ``total``: ``chunk`` each except the
    last ones, which shrink (the last ``workers`` tasks get a quarter of it, the ``workers`` before
    them half) so that all workers run dry at about the same time: a stage ends with its slowest
    task. Big tasks elsewhere, because Ray Data notices a finished task only on its next 0.1 s
    poll once two or more run at a time (~0.15 s of a worker per task here at 2 CPUs;
    ray-project/ray#45934)."""
    sizes: list[int] = []
    left = total
    while left > 0:
        size = max(1, chunk >> max(0, 2 - len(sizes) // max(1, workers)))
        sizes.append(min(size, left))
        left -= size
    return sizes[::-1]


def _newline_counts(cuts: list[tuple[str, list[tuple[int, int]]]]) -> list[list[int]]:
    """Newlines in each byte range of each cut file: on the driver (page-cache speed, ~1 GB/s
    here) up to DRIVER_COUNT_BYTES, beyond that in parallel Ray tasks (one per file), whose first
    run costs ~1.5 s of worker start-up on the job's critical path."""
    if sum(ranges[-1][1] for _, ranges in cuts) <= DRIVER_COUNT_BYTES:
        return [count_newlines(path, ranges) for path, ranges in cuts]
    import ray

    task = ray.remote(count_newlines)
    return ray.get([task.remote(path, ranges) for path, ranges in cuts])


def plan_reads(
    inputs: list[SourceConfig], files: list[dict[str, Any]], chunk_bytes: int | None = None, workers: int = 1
) -> list[list[dict[str, Any]]]:
    """The read tasks, in input order: each a list of file pieces, of ``read_task_sizes`` bytes
    in all. The files are laid end to end and cut at the task boundaries: an uncompressed jsonl or
    text file into byte ranges, one per task it spans; a file that cannot be entered mid-way
    (compressed, parquet, whole files) goes whole to the task its first byte falls in (tasks it
    covers entirely stay empty and are left out). A piece is a file entry with ``start``/``end``
    (bytes; ``end`` None = to the end of the file) and ``line0``, the number of lines before
    ``start``; it owns the lines that start in [start, end)."""
    total = sum(f["size"] for f in files)
    chunk = max(chunk_bytes or CHUNK_BYTES, -(-total // MAX_READ_TASKS))
    ends = list(itertools.accumulate(read_task_sizes(total, chunk, workers))) or [0]
    tasks: list[list[dict[str, Any]]] = [[] for _ in ends]
    cuts: list[tuple[list[dict[str, Any]], list[tuple[int, int]]]] = []  # (pieces, byte ranges) per cut file
    pos = 0  # where the file starts in the stream of all input bytes
    for entry in files:
        size = entry["size"]
        k = min(bisect.bisect_right(ends, pos), len(tasks) - 1)  # the task this file's first byte is in
        if not (splittable(entry, inputs[entry["input"]]) and pos + size > ends[k]):
            tasks[k].append({**entry, "start": 0, "end": None, "line0": 0})
        else:
            bounds = [0] + [e - pos for e in ends[k:] if e < pos + size] + [size]
            pieces = [{**entry, "start": a, "end": b, "line0": 0} for a, b in zip(bounds, bounds[1:])]
            for j, piece in enumerate(pieces):
                tasks[k + j].append(piece)
            cuts.append((pieces, list(zip(bounds, bounds[1:-1]))))  # the last range's count is not needed
        pos += size
    counts = _newline_counts([(pieces[0]["path"], ranges) for pieces, ranges in cuts])
    for (pieces, _), per_range in zip(cuts, counts):
        for piece, before in zip(pieces, itertools.accumulate([0, *per_range])):
            piece["line0"] = before
    return [task for task in tasks if task]


def _lines(fh: IO[bytes], start: int, end: int | None, line0: int) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of the lines of ``fh`` that start in [start, end)."""
    number, pos = line0, start
    if start > 0:  # skip the rest of a line that began before start (a previous range's)
        fh.seek(start - 1)
        pos = start - 1 + len(fh.readline())
        number += pos > start  # the newline that ended it lies in [start, pos)
    for raw in fh:
        if end is not None and pos >= end:
            return
        number += 1
        pos += len(raw)
        yield number, raw


def doc_id(source: str, rel: str, line: int | None) -> str:
    return f"{source}/{rel}" if line is None else f"{source}/{rel}:{line:09d}"


def compression(path: str | Path) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return None


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that notices truncation (python-zstandard's stream_reader
    silently stops at a cut frame) and reads concatenated frames."""

    def __init__(self, path: str | Path, chunk: int = 1 << 20):
        import zstandard

        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._chunk = chunk
        self._buf = memoryview(b"")
        self._mid_frame = False
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not len(self._buf) and not self._done:
            data = self._file.read(self._chunk)
            if not data:
                if self._mid_frame:
                    raise EOFError("zstd stream ended before the end of its frame (truncated file)")
                self._done = True
                return
            out = []
            while data:
                if self._obj.eof:
                    self._obj = self._dctx.decompressobj()
                out.append(self._obj.decompress(data))
                data = self._obj.unused_data if self._obj.eof else b""
            self._mid_frame = not self._obj.eof
            self._buf = memoryview(b"".join(out))

    def readinto(self, b) -> int:
        self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


def open_binary(path: str | Path) -> IO[bytes]:
    """A binary stream of the (decompressed) file; truncated gzip/zstd raise EOFError."""
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def _field_text(obj: dict, fields: list[str]) -> tuple[str | None, str | None]:
    parts = []
    for name in fields:
        if name not in obj:
            return None, f"missing field {name!r}"
        value = obj[name]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            return None, f"field {name!r} is {kind}, not a string"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a JSON \udXXX escape without its pair: Arrow cannot hold it
            return None, f"field {name!r} is not valid UTF-8 (an unpaired surrogate at character {exc.start})"
        if value.strip():
            parts.append(value.strip())
    return "\n".join(parts), None


def _text_from_json(line: str, fields: list[str]) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:  # nested deeper than the parser's recursion limit
        return None, "invalid JSON: nested too deeply"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {type(obj).__name__})"
    return _field_text(obj, fields)


def _parquet_rows(path: Path, fields: list[str]) -> Iterator[tuple[int, dict]]:
    """(row number from 1, {field: value} of the fields the file has) per parquet row."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    present = [f for f in fields if f in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=present or None):
        data = batch.select(present).to_pylist() if present else [{}] * batch.num_rows
        for record in data:
            row += 1
            yield row, record


def read_file_rows(entry: dict[str, Any], src: SourceConfig) -> Iterator[dict[str, Any]]:
    """Plain-Python core of the reader: DOC_SCHEMA rows for one file."""
    base = {"source": src.source, "lang": src.lang, "file": entry["display"], "key": None}

    def ok(text: str, line: int | None) -> dict[str, Any]:
        did = doc_id(src.source, entry["rel"], line)
        return {
            **base,
            "doc_id": did,
            "line": line or 0,
            "text": convert(text, src.converter, src.lang),
            "status": OK,
            "reason": None,
            "raw": None,
        }

    def bad(raw: str, line: int | None, reason: str) -> dict[str, Any]:
        did = doc_id(src.source, entry["rel"], line)
        return {
            **base,
            "doc_id": did,
            "line": line or 0,
            "text": "",
            "status": MALFORMED,
            "reason": reason,
            "raw": raw[:MAX_RAW],
            "key": "~" + did,
        }

    path = Path(entry["path"])
    fields = [src.text_field] if isinstance(src.text_field, str) else list(src.text_field)
    if src.format == "files":
        try:
            with open_binary(path) as fh:
                data = fh.read()
        except _stream_errors() as exc:  # corrupt gzip / zstd
            yield bad("", None, f"unreadable file: {exc}")
            return
        try:
            yield ok(data.decode("utf-8"), None)
        except UnicodeDecodeError as exc:
            yield bad(data.decode("utf-8", "replace"), None, f"not valid UTF-8 (byte {exc.start})")
        return
    if src.format == "parquet":
        try:
            for row, record in _parquet_rows(path, fields):
                text, reason = _field_text(record, fields)
                if reason is None:
                    yield ok(text, row)
                else:
                    yield bad(json.dumps(record, ensure_ascii=False, default=str), row, reason)
        except (OSError, pa.ArrowException) as exc:  # a corrupt file is quarantined, not fatal
            yield bad("", None, f"unreadable parquet file: {type(exc).__name__}: {exc}")
        return
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw_bytes in _lines(fh, entry.get("start", 0), entry.get("end"), entry.get("line0", 0)):
                try:
                    line = raw_bytes.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    yield bad(
                        raw_bytes.decode("utf-8", "replace").rstrip("\r\n"),
                        lineno,
                        f"not valid UTF-8 (byte {exc.start})",
                    )
                    continue
                if not line.strip():
                    continue
                if src.format == "text":
                    yield ok(line, lineno)
                    continue
                text, reason = _text_from_json(line, fields)
                yield ok(text, lineno) if reason is None else bad(line, lineno, reason)
    except _stream_errors() as exc:  # truncated or corrupt compressed stream: keep what was read
        yield bad("", lineno + 1, f"unreadable from line {lineno + 1}: {type(exc).__name__}: {exc}")


def read_files_batch(batch: pa.Table, inputs: list[dict[str, Any]]) -> Iterator[pa.Table]:
    """map_batches UDF: a batch of file entries -> streamed DOC_SCHEMA blocks."""
    sources = [SourceConfig.model_validate(s) for s in inputs]
    rows: list[dict[str, Any]] = []
    for entry in batch.to_pylist():
        for row in read_file_rows(entry, sources[entry["input"]]):
            rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
                rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def read_sources(
    inputs: list[SourceConfig],
    files: list[dict[str, Any]] | None = None,
    rows_per_block: int = BATCH_ROWS,
    chunk_bytes: int | None = None,
):
    """Ray Data: every input file -> DOC_SCHEMA rows (ok or malformed), one task per read task of
    ``plan_reads``, streaming blocks of at most ``rows_per_block`` rows. The map stages that
    follow (filters, signatures) fuse into the same tasks, so the raw text never passes through
    the object store. Only when a task holds a big piece it cannot cut (a compressed or parquet
    file over ``chunk_bytes``) are the rows re-cut into blocks first, so the filters spread that
    file over many tasks instead of running in its read task."""
    import ray

    files = files if files is not None else list_input_files(inputs)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    tasks = plan_reads(inputs, files, chunk_bytes, workers=max(1, int(ray.cluster_resources().get("CPU", 1))))
    ds = ray.data.from_arrow([pa.Table.from_pylist(task, schema=PIECE_SCHEMA) for task in tasks])  # one block each
    ds = ds.map_batches(
        read_files_batch,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"inputs": [s.model_dump() for s in inputs]},
    )
    if any(p["end"] is None and p["size"] > chunk_bytes for task in tasks for p in task):
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds
