"""Readers: jsonl, plain text (one document per line) and code files (one document per file).

Files are listed on the driver (paths only) and read in parallel, one Ray task per file. Each
document gets a stable ``doc_id`` = ``source/relative-file:line`` (line zero-padded, so string
order is file order; whole files have no line part). A line that cannot be read as a document
(bad JSON, not an object, a missing or non-string text field, invalid UTF-8) is not fatal: it
becomes a ``malformed`` row carrying the reason and the raw line (first ``MAX_RAW`` characters),
later written to ``out_dir/quarantine/``. Blank lines are not documents and are not counted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from knowlm_ray.config import ConfigError, SourceConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, MALFORMED, OK

MAX_RAW = 4096
BATCH_ROWS = 2048  # rows per yielded block while streaming a large file
MAX_READ_TASKS = 1024


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
            files.append({"input": index, "path": str(path.resolve()), "rel": rel, "display": display})
    return files


def doc_id(source: str, rel: str, line: int | None) -> str:
    return f"{source}/{rel}" if line is None else f"{source}/{rel}:{line:09d}"


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _text_from_json(line: str, fields: list[str]) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {type(obj).__name__})"
    parts = []
    for name in fields:
        if name not in obj:
            return None, f"missing field {name!r}"
        value = obj[name]
        if not isinstance(value, str):
            return None, f"field {name!r} is {type(value).__name__}, not a string"
        if value.strip():
            parts.append(value.strip())
    return "\n".join(parts), None


def read_file_rows(entry: dict[str, Any], src: SourceConfig) -> Iterator[dict[str, Any]]:
    """Plain-Python core of the reader: DOC_SCHEMA rows for one file."""
    base = {"source": src.source, "lang": src.lang, "file": entry["display"], "key": None}

    def ok(text: str, line: int | None) -> dict[str, Any]:
        did = doc_id(src.source, entry["rel"], line)
        return {**base, "doc_id": did, "line": line or 0, "text": _clean(text), "status": OK,
                "reason": None, "raw": None}

    def bad(raw: str, line: int | None, reason: str) -> dict[str, Any]:
        did = doc_id(src.source, entry["rel"], line)
        return {**base, "doc_id": did, "line": line or 0, "text": "", "status": MALFORMED,
                "reason": reason, "raw": raw[:MAX_RAW], "key": "~" + did}

    path = Path(entry["path"])
    if src.format == "files":
        data = path.read_bytes()
        try:
            yield ok(data.decode("utf-8"), None)
        except UnicodeDecodeError as exc:
            yield bad(data.decode("utf-8", "replace"), None, f"not valid UTF-8 (byte {exc.start})")
        return
    fields = [src.text_field] if isinstance(src.text_field, str) else list(src.text_field)
    with open(path, "rb") as fh:
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


def read_sources(inputs: list[SourceConfig], files: list[dict[str, Any]] | None = None):
    """Ray Data: every input file -> DOC_SCHEMA rows (ok or malformed), one read task per file."""
    import ray

    files = files if files is not None else list_input_files(inputs)
    # One block (= one read task) per file, up to a cap; beyond it a task reads several files.
    ds = ray.data.from_items(files, override_num_blocks=max(1, min(len(files), MAX_READ_TASKS)))
    return ds.map_batches(read_files_batch, batch_size=1, batch_format="pyarrow",
                          fn_kwargs={"inputs": [s.model_dump() for s in inputs]})
