"""Readers: jsonl, plain text (one document per line), parquet (one per row) and whole files
(one document per file, e.g. a code tree by glob); jsonl, text and files may be gzip (``.gz``) or
zstd (``.zst``/``.zstd``) compressed, recognised by extension and decompressed while streaming.
Each document's text then goes through its source's converter (``text.convert``: whitespace,
full-width folding, wiki/baike markup).

Files are listed on the driver (paths only) and read in parallel, one Ray task per file. Each
document gets a stable ``doc_id`` = ``source/relative-file:line`` (line zero-padded, so string
order is file order; whole files have no line part). A line that cannot be read as a document
(bad JSON, not an object, a missing or non-string text field, invalid UTF-8) is not fatal: it
becomes a ``malformed`` row carrying the reason and the raw line (first ``MAX_RAW`` characters),
later written to ``out_dir/quarantine/``. Blank lines are not documents and are not counted.
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

import pyarrow as pa

from knowlm_ray.config import ConfigError, SourceConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, MALFORMED, OK
from knowlm_ray.corpus.text import convert

MAX_RAW = 4096
BATCH_ROWS = 2048  # rows per yielded block while streaming a large file
MAX_READ_TASKS = 1024
READ_TASK_BYTES = 32 * 2**20  # input bytes per read task, about


def list_input_files(inputs: list[SourceConfig]) -> list[dict[str, Any]]:
    """One entry per file to read, in a fixed order. Raises on a missing path or an empty glob."""
    files: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for index, src in enumerate(inputs):
        root = Path(src.path).expanduser()
        if root.is_file():
            found = [(root, root.name)]
        elif root.is_dir():
            found = sorted(((p, p.relative_to(root).as_posix()) for p in root.glob(src.glob) if p.is_file()),
                           key=lambda x: x[1])
            if not found:
                raise FileNotFoundError(f"input {index} (source {src.source!r}): no files match "
                                        f"glob {src.glob!r} under {src.path}")
        else:
            raise FileNotFoundError(f"input {index} (source {src.source!r}): path not found: {src.path}")
        for path, rel in found:
            if (src.source, rel) in seen:  # two inputs would produce the same doc_ids
                raise ConfigError(f"input {index} (source {src.source!r}): {rel} clashes with "
                                 f"{seen[(src.source, rel)]}; give the inputs different source names")
            seen[(src.source, rel)] = str(path)
            display = src.path if root.is_file() else f"{src.path.rstrip('/')}/{rel}"
            files.append({"input": index, "path": str(path.resolve()), "rel": rel, "display": display,
                          "size": path.stat().st_size})
    return files


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
        if value.strip():
            parts.append(value.strip())
    return "\n".join(parts), None


def _text_from_json(line: str, fields: list[str]) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
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
        return {**base, "doc_id": did, "line": line or 0, "text": convert(text, src.converter, src.lang),
                "status": OK, "reason": None, "raw": None}

    def bad(raw: str, line: int | None, reason: str) -> dict[str, Any]:
        did = doc_id(src.source, entry["rel"], line)
        return {**base, "doc_id": did, "line": line or 0, "text": "", "status": MALFORMED,
                "reason": reason, "raw": raw[:MAX_RAW], "key": "~" + did}

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
            for lineno, raw_bytes in enumerate(fh, start=1):
                try:
                    line = raw_bytes.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    yield bad(raw_bytes.decode("utf-8", "replace").rstrip("\r\n"), lineno,
                              f"not valid UTF-8 (byte {exc.start})")
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


def read_sources(inputs: list[SourceConfig], files: list[dict[str, Any]] | None = None,
                 rows_per_block: int = BATCH_ROWS):
    """Ray Data: every input file -> DOC_SCHEMA rows (ok or malformed), in blocks of at most
    ``rows_per_block`` rows so the stages after the read (filters, ...) spread a big file over
    many tasks. Files are grouped into read tasks of about ``READ_TASK_BYTES`` (a code tree of
    thousands of small files does not become thousands of tasks)."""
    import ray

    files = files if files is not None else list_input_files(inputs)
    total = sum(f.get("size", 0) for f in files)
    tasks = max(1, min(len(files), MAX_READ_TASKS, -(-total // READ_TASK_BYTES)))
    ds = ray.data.from_items(files, override_num_blocks=tasks)
    # num_cpus=0.5: reading is light, and a resource request unlike the next stage's keeps Ray
    # Data from fusing the (heavy) filters into the read task, where one task would filter a
    # whole big file; apart, the filter tasks share its blocks out
    ds = ds.map_batches(read_files_batch, batch_size=1, batch_format="pyarrow", num_cpus=0.5,
                        fn_kwargs={"inputs": [s.model_dump() for s in inputs]})
    # Ray Data merges what a task yields into blocks of up to 128 MiB: cut them again
    return ds.repartition(target_num_rows_per_block=rows_per_block)
