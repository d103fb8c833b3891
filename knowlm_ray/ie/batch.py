"""Corpus-scale knowledge-graph extraction: Ray Data over blocks of documents, an actor pool of models.

    python jobs/batch_extract.py --config jobs/configs/tiny_extract.yaml [key.path=value ...]

The input (a jsonl file or directory, or corpus Arrow shards decoded with the model's tokenizer)
is cut into numbered blocks of ``block_size`` documents — by byte ranges of jsonl lines, by row
ranges of shards — so the same input and block size always give the same blocks. Each block is
one Ray Data row; ``map_batches`` sends it to an actor of an ``ActorPoolStrategy`` pool, each actor
holding one ``GenerationEngine``. The actor extracts every document of the block (all its prompts
for ``docs_per_call`` documents in one batched ``generate``) and writes the block's IE records as
``parts/part-NNNNN.jsonl`` (temp name, then rename: a part exists only when its block is done).

A re-run skips blocks whose part exists, so a killed run resumes and every record is written
exactly once. When all parts exist, the driver writes (each atomically) into ``out_dir``:

* ``records.jsonl`` — the IE records (DESIGN format + offsets, ``raw``, ``dropped``), input order;
* ``triples.parquet`` — one row per relation: doc_id, head, relation, tail, entity types of head
  and tail when NER found them, character offsets;
* ``summary.json`` — counts of documents, entities per type, relations per type, events per type,
  unparsed answers, dropped labels, and throughput of this run.

``out_dir/state.json`` records the plan (input, block size, tasks, schema...); re-running into the
same ``out_dir`` with different settings is an error rather than a silently mixed output.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_open, atomic_path
from knowlm_ray.config import BatchExtractConfig, ConfigError

PART = "part-{:05d}.jsonl"
STATE_KEYS = (
    "input",
    "input_format",
    "text_field",
    "id_field",
    "lang",
    "tasks",
    "schema",
    "block_size",
    "limit",
    "format",
    "max_chars",
    "model",
)


# ------------------------------------------------------------------------------- schemas
def load_schema_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The schema from the config: a dict, or a JSON file's contents."""
    from knowlm_ray.ie.records import read_json_object

    if isinstance(spec, dict):
        return spec
    try:
        return read_json_object(spec, "schema file")
    except ValueError as exc:  # RecordError: the file, named
        raise ConfigError(str(exc)) from None


def schema_for(spec: dict[str, Any], task: str, lang: str) -> Any:
    """The labels for ``task`` in language ``lang`` from a per-language or per-task schema."""
    if set(spec) & {"zh", "en"}:
        section = spec.get(lang)
        if not isinstance(section, dict) or task not in section:
            raise ConfigError(f"schema has no {lang}.{task} section")
        return section[task]
    if task not in spec:
        raise ConfigError(f"schema has no {task!r} labels (keys: {', '.join(spec)})")
    return spec[task]


def schema_from_gold(records: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """A per-language schema of the labels the gold records use (first-seen order)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        s = out.setdefault(rec.get("lang", "zh"), {"ner": [], "re": [], "ee": {}})
        for e in rec.get("entities", []):
            s["ner"] += [e["type"]] if e["type"] not in s["ner"] else []
        for r in rec.get("relations", []):
            s["re"] += [r["relation"]] if r["relation"] not in s["re"] else []
        for ev in rec.get("events", []):
            roles = s["ee"].setdefault(ev["type"], [])
            for a in ev["arguments"]:
                roles += [a["role"]] if a["role"] not in roles else []
    return out


def check_schema(spec: dict[str, Any], cfg: BatchExtractConfig) -> None:
    """Fail on a schema gap before any model loads (not in an actor, block by block)."""
    from knowlm_ray.ie.schema import SchemaError, normalize_schema

    per_lang = bool(set(spec) & {"zh", "en"})
    langs = [cfg.lang] if cfg.lang else ([k for k in ("zh", "en") if k in spec] if per_lang else ["zh"])
    for lang in langs:
        for task in cfg.tasks:
            try:
                normalize_schema(task, schema_for(spec, task, lang))
            except SchemaError as exc:
                where = f"{lang}.{task}" if per_lang else task
                raise ConfigError(f"schema {where}: {exc}") from None


# --------------------------------------------------------------------------------- blocks
def _is_shards(path: Path, fmt: str) -> bool:
    if fmt != "auto":
        return fmt == "shards"
    return path.is_dir() and (any(path.glob("part-*.arrow")) or (path / "shards").is_dir())


def jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if files:
            return files
    raise ConfigError(f"input: no jsonl file at {path}")


def plan_blocks(cfg: BatchExtractConfig) -> list[dict[str, Any]]:
    """The numbered blocks of the input (deterministic for the same input and block size)."""
    path = Path(cfg.input)
    if not path.exists():
        raise ConfigError(f"input not found: {path}")
    blocks: list[dict[str, Any]] = []
    remaining = cfg.limit or None

    def add(**kw: Any) -> None:
        blocks.append({"block": len(blocks), **kw})

    if _is_shards(path, cfg.input_format):
        import pyarrow as pa

        from knowlm_ray.corpus.shards import shard_files

        for f in shard_files(path):
            n = pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all().num_rows
            if remaining is not None:
                n = min(n, remaining)
                remaining -= n
            for start in range(0, n, cfg.block_size):
                add(kind="shards", path=str(f), start=start, end=min(n, start + cfg.block_size), line=start)
            if remaining == 0:
                break
        return blocks
    for f in jsonl_files(path):
        offsets: list[tuple[int, int]] = []  # (byte offset, line number) of each non-blank line
        pos = 0
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if raw.strip():
                    offsets.append((pos, n))
                pos += len(raw)
        if remaining is not None:
            offsets = offsets[:remaining]
            remaining -= len(offsets)
        for i in range(0, len(offsets), cfg.block_size):
            chunk = offsets[i : i + cfg.block_size]
            nxt = i + cfg.block_size
            end = offsets[nxt][0] if nxt < len(offsets) else _line_end(f, chunk[-1][0])
            add(kind="jsonl", path=str(f), start=chunk[0][0], end=end, line=chunk[0][1])
        if remaining == 0:
            break
    return blocks


def _line_end(path: Path, start: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(start)
        return start + len(fh.readline())


def read_block(block: dict[str, Any], cfg: BatchExtractConfig, tokenizer: Any = None) -> tuple[list[dict], dict]:
    """The documents of one block (``{"id", "text", "lang"}``) and counts of what was skipped."""
    from knowlm_ray.ie.templates import guess_lang

    docs, skipped = [], Counter()
    if block["kind"] == "shards":
        import pyarrow as pa

        table = pa.ipc.open_file(pa.memory_map(block["path"], "r")).read_all()
        rows = table.slice(block["start"], block["end"] - block["start"])
        ids, doc_ids = rows.column("input_ids").to_pylist(), rows.column("doc_id").to_pylist()
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        for k, (doc_id, text) in enumerate(zip(doc_ids, texts)):
            row = block["start"] + k
            if not text.strip():
                skipped["empty"] += 1
                continue
            docs.append(
                {"id": f"{doc_id}@{Path(block['path']).stem}:{row}", "text": text, "lang": cfg.lang or guess_lang(text)}
            )
        return docs, dict(skipped)
    with open(block["path"], "rb") as fh:
        fh.seek(block["start"])
        data = fh.read(block["end"] - block["start"])
    stem = Path(block["path"]).stem
    line_no = block["line"] - 1
    for raw in data.splitlines():
        line_no += 1
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped["malformed"] += 1
            continue
        text = obj.get(cfg.text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            skipped["malformed"] += 1
            continue
        if not text.strip():
            skipped["empty"] += 1
            continue
        doc_id = obj.get(cfg.id_field)
        lang = cfg.lang or (obj.get("lang") if obj.get("lang") in ("zh", "en") else guess_lang(text))
        docs.append({"id": str(doc_id) if doc_id is not None else f"{stem}:{line_no}", "text": text, "lang": lang})
    return docs, dict(skipped)


# ---------------------------------------------------------------------------- the plain core
def extract_documents(
    docs: Sequence[dict],
    tasks: Sequence[str],
    schema: dict[str, Any],
    generate_fn: Callable,
    *,
    docs_per_call: int = 8,
    fmt: str = "json",
    max_chars: int | None = 400,
    prompt_format: str | None = None,
    tokenizer: Any = None,
) -> list[dict]:
    """One IE record per document of ``docs`` (``{"id", "text", "lang"}``), every task merged.

    The prompts of ``docs_per_call`` documents (all tasks, chunks and schema batches) go into
    one ``generate_fn`` call. A task whose schema has no labels for a document's language is skipped.
    """
    from knowlm_ray.ie.extract import empty_record, extract_many, merge_records

    out = []
    for i in range(0, len(docs), docs_per_call):
        group = docs[i : i + docs_per_call]
        reqs, owner = [], []
        for k, d in enumerate(group):
            for t in tasks:
                labels = schema_for(schema, t, d["lang"])
                if labels:
                    reqs.append({"task": t, "text": d["text"], "lang": d["lang"], "id": d["id"], "schema": labels})
                    owner.append(k)
        recs = extract_many(
            generate_fn, reqs, fmt=fmt, max_chars=max_chars, prompt_format=prompt_format, tokenizer=tokenizer
        )
        for k, d in enumerate(group):
            mine = [r for r, o in zip(recs, owner) if o == k]
            out.append(merge_records(mine) if mine else empty_record(d["id"], d["text"], d["lang"]))
    return out


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    with atomic_open(path, mode) as fh:
        write(fh)


def process_block(
    block: dict[str, Any], cfg: BatchExtractConfig, schema: dict[str, Any], generate_fn: Callable, tokenizer: Any = None
) -> dict[str, Any]:
    """Extract one block and write its part file atomically (skipped when the part exists)."""
    parts = Path(cfg.out_dir) / "parts"
    part = parts / PART.format(block["block"])
    if part.exists():
        now = time.time()
        return {
            "block": block["block"],
            "documents": 0,
            "skipped": True,
            "seconds": 0.0,
            "started": now,
            "finished": now,
        }
    started, t0 = time.time(), time.perf_counter()
    docs, skipped = read_block(block, cfg, tokenizer)
    records = extract_documents(
        docs,
        cfg.tasks,
        schema,
        generate_fn,
        docs_per_call=cfg.docs_per_call,
        fmt=cfg.format,
        max_chars=cfg.max_chars,
        prompt_format=cfg.prompt_format,
        tokenizer=tokenizer,
    )
    meta = {
        "block": block["block"],
        "documents": len(records),
        **{k: skipped.get(k, 0) for k in ("malformed", "empty")},
    }

    def write(fh):
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    # the meta first: the part's existence is what marks the block done
    _write_atomic(parts / f"part-{block['block']:05d}.meta.json", lambda fh: json.dump(meta, fh))
    _write_atomic(part, write)
    return {**meta, "skipped": False, "seconds": time.perf_counter() - t0, "started": started, "finished": time.time()}


# ------------------------------------------------------------------------------- finalising
TRIPLE_COLUMNS = [
    ("doc_id", "string"),
    ("head", "string"),
    ("relation", "string"),
    ("tail", "string"),
    ("head_type", "string"),
    ("tail_type", "string"),
    ("head_start", "int64"),
    ("head_end", "int64"),
    ("tail_start", "int64"),
    ("tail_end", "int64"),
]


def _triples(rec: dict) -> list[dict]:
    types: dict[str, str] = {}
    for e in rec.get("entities", []):
        types.setdefault(e["text"], e["type"])
    return [
        {
            "doc_id": rec["id"],
            "head": r["head"],
            "relation": r["relation"],
            "tail": r["tail"],
            "head_type": types.get(r["head"]),
            "tail_type": types.get(r["tail"]),
            "head_start": r.get("head_start"),
            "head_end": r.get("head_end"),
            "tail_start": r.get("tail_start"),
            "tail_end": r.get("tail_end"),
        }
        for r in rec.get("relations", [])
    ]


def finalize(out_dir: str | Path, n_blocks: int) -> dict[str, Any]:
    """Merge the parts into records.jsonl, triples.parquet and summary.json (each atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, parts = Path(out_dir), Path(out_dir) / "parts"
    missing = [b for b in range(n_blocks) if not (parts / PART.format(b)).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} block(s) have no part file yet (first: {missing[0]}); re-run to finish")
    counts: dict[str, Counter] = {k: Counter() for k in ("entity_types", "relation_types", "event_types")}
    totals = Counter()
    schema = pa.schema([(name, getattr(pa, typ)()) for name, typ in TRIPLE_COLUMNS])
    seen_ids: set[str] = set()

    def records_and_triples(fh) -> None:
        with atomic_path(out / "triples.parquet") as tmp_parquet, pq.ParquetWriter(tmp_parquet, schema) as writer:
            for b in range(n_blocks):
                rows = []
                with open(parts / PART.format(b), encoding="utf-8") as part:
                    for line in part:
                        fh.write(line)
                        rec = json.loads(line)
                        totals["documents"] += 1
                        totals["duplicate_ids"] += rec["id"] in seen_ids
                        seen_ids.add(rec["id"])
                        counts["entity_types"].update(e["type"] for e in rec["entities"])
                        counts["relation_types"].update(r["relation"] for r in rec["relations"])
                        counts["event_types"].update(e["type"] for e in rec["events"])
                        totals["unparsed_answers"] += rec.get("unparsed", 0)
                        totals["answers"] += len(rec.get("raw", []))
                        totals["dropped_labels"] += sum(d.get("count", 1) for d in rec.get("dropped", []))
                        totals["unanchored_spans"] += sum(e["start"] is None for e in rec["entities"])
                        rows += _triples(rec)
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                totals["triples"] += len(rows)
                meta = parts / f"part-{b:05d}.meta.json"
                if meta.exists():
                    m = json.loads(meta.read_text(encoding="utf-8"))
                    totals["malformed"] += m.get("malformed", 0)
                    totals["empty"] += m.get("empty", 0)

    _write_atomic(out / "records.jsonl", records_and_triples)
    summary = {
        "documents": totals["documents"],
        "blocks": n_blocks,
        "entities": sum(counts["entity_types"].values()),
        "relations": sum(counts["relation_types"].values()),
        "events": sum(counts["event_types"].values()),
        **{k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in counts.items()},
        **{
            k: totals[k]
            for k in (
                "triples",
                "answers",
                "unparsed_answers",
                "dropped_labels",
                "unanchored_spans",
                "malformed",
                "empty",
                "duplicate_ids",
            )
        },
    }
    return summary


# ------------------------------------------------------------------------------- Ray-facing
class ExtractWorker:
    """A Ray Data actor: one model, many blocks (``map_batches`` callable class)."""

    def __init__(self, cfg: dict[str, Any]):
        from knowlm_ray.generation.engine import GenerationEngine
        from knowlm_ray.ie.extract import engine_generate_fn

        self.cfg = BatchExtractConfig.model_validate(cfg)
        device = "cuda" if self.cfg.use_gpu else self.cfg.device
        engine = GenerationEngine(
            self.cfg.model, device=device, dtype=self.cfg.dtype, num_threads=self.cfg.threads_per_actor
        )
        self.tokenizer = engine.tokenizer
        self.schema = load_schema_spec(self.cfg.schema_)
        self.generate = engine_generate_fn(engine, {"max_tokens": self.cfg.max_tokens})

    def __call__(self, batch):
        import pyarrow as pa

        rows = (
            batch.to_pylist()
            if hasattr(batch, "to_pylist")
            else [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        )
        results = [
            {**process_block(row, self.cfg, self.schema, self.generate, self.tokenizer), "worker": os.getpid()}
            for row in rows
        ]
        return pa.Table.from_pylist(results)


def _state(cfg: BatchExtractConfig, n_blocks: int) -> dict[str, Any]:
    dump = cfg.model_dump(by_alias=True)
    state = {k: dump[k] for k in STATE_KEYS}
    if isinstance(cfg.schema_, str):  # a file: its contents count, not its name
        state["schema_sha256"] = hashlib.sha256(Path(cfg.schema_).read_bytes()).hexdigest()
    path = Path(cfg.input)
    if _is_shards(path, cfg.input_format):
        from knowlm_ray.corpus.shards import shard_files

        files = shard_files(path)
    else:
        files = jsonl_files(path)
    state["input_bytes"] = sum(f.stat().st_size for f in files)  # an edited input is a new plan
    state["blocks"] = n_blocks
    if cfg.prompt_format != "alpaca":  # only when set: older runs' state.json has no such key
        state["prompt_format"] = cfg.prompt_format
    return state


def check_state(cfg: BatchExtractConfig, n_blocks: int) -> None:
    """Write out_dir/state.json, or check a previous run's matches (else resuming would mix outputs)."""
    out = Path(cfg.out_dir)
    state = json.loads(json.dumps(_state(cfg, n_blocks)))
    path = out / "state.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if diff:
            raise ConfigError(
                f"{out} holds a batch_extract run with different settings ({', '.join(diff)}); "
                f"use another out_dir or delete it"
            )
        return
    _write_atomic(path, lambda fh: json.dump(state, fh, ensure_ascii=False, indent=1))


def _clean_temp(parts: Path) -> int:
    """Remove temp files a killed run left behind."""
    n = 0
    for tmp in parts.glob(".*.tmp") if parts.is_dir() else []:
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def run(cfg: BatchExtractConfig, progress: bool = True) -> dict[str, Any]:
    """The whole job (needs Ray: ``knowlm_ray.runtime.init_ray`` first). Returns the summary."""
    import ray

    t0 = time.perf_counter()
    check_schema(load_schema_spec(cfg.schema_), cfg)
    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"model: no HF model directory at {cfg.model}")
    blocks = plan_blocks(cfg)
    out, parts = Path(cfg.out_dir), Path(cfg.out_dir) / "parts"
    out.mkdir(parents=True, exist_ok=True)
    check_state(cfg, len(blocks))
    _clean_temp(parts)
    pending = [b for b in blocks if not (parts / PART.format(b["block"])).exists()]
    done_docs, ran = 0, []
    if pending:
        from ray.data import ActorPoolStrategy

        ds = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
            ExtractWorker,
            fn_constructor_kwargs={"cfg": cfg.model_dump(by_alias=True)},
            batch_size=1,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=min(cfg.num_actors, len(pending))),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=1 if cfg.use_gpu else 0,
        )
        for row in ds.iter_rows():
            ran.append(row)
            done_docs += row["documents"]
            if progress:
                print(
                    f"[batch_extract] block {row['block']:>5} done: {row['documents']} documents in "
                    f"{row['seconds']:.1f}s ({len(ran)}/{len(pending)} blocks this run)",
                    file=sys.stderr,
                )
    elapsed = time.perf_counter() - t0
    # From the first block's start to the last block's end: the pool's extraction time, without
    # the job's fixed costs (Ray Data start, actor start, model load, final merge).
    window = max(r["finished"] for r in ran) - min(r["started"] for r in ran) if ran else 0.0
    summary = finalize(out, len(blocks))
    summary.update(
        {
            "blocks_run": len(ran),
            "blocks_skipped": len(blocks) - len(ran),
            "documents_this_run": done_docs,
            "elapsed_s": round(elapsed, 3),
            "docs_per_s": round(done_docs / elapsed, 3) if done_docs else 0.0,
            "extract_window_s": round(window, 3),
            "actors_used": len({r["worker"] for r in ran}),
            "extract_docs_per_s": round(done_docs / window, 3) if done_docs and window else 0.0,
            "num_actors": cfg.num_actors,
            "out_dir": str(out),
            "files": {"records": "records.jsonl", "triples": "triples.parquet", "summary": "summary.json"},
        }
    )
    _write_atomic(out / "summary.json", lambda fh: json.dump(summary, fh, ensure_ascii=False, indent=1))
    if progress:
        print(
            f"[batch_extract] {summary['documents']} documents, {summary['entities']} entities, "
            f"{summary['relations']} relations, {summary['events']} events -> {out} "
            f"({summary['blocks_run']} blocks run, {summary['blocks_skipped']} skipped, {elapsed:.1f}s)",
            file=sys.stderr,
        )
    return summary


def iter_records(out_dir: str | Path) -> Iterator[dict]:
    with open(Path(out_dir) / "records.jsonl", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def run_sequential(
    cfg: BatchExtractConfig, generate_fn: Callable, tokenizer: Any = None, blocks: Iterable[dict] | None = None
) -> list[dict]:
    """The plain-Python core of ``run`` (no Ray): process ``blocks`` (default: all) in this process."""
    schema = load_schema_spec(cfg.schema_)
    plan = plan_blocks(cfg)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    check_state(cfg, len(plan))
    return [process_block(b, cfg, schema, generate_fn, tokenizer) for b in (plan if blocks is None else blocks)]
