"""``prepare_corpus``: raw corpora -> deduplicated, split, tokenised Arrow shards + manifest.

Ray Data stages, streaming until the tokenised rows are materialised once (in the object
store, which spills to disk; the driver only ever sees file lists, counts and summaries):

    read (one task per file) -> filter + dedup key -> exact dedup (hash shuffle)
    -> [near dedup: later] -> sentence split + tokenise (actor pool) -> materialise
    -> counts (one task per block)
    -> one sort by (status, doc_id, sample) -> quarantine/ (malformed lines) + shards/

Rows are never dropped on the way, only given a status, so the counts in the manifest are
exact. Output goes to a hidden staging dir next to ``out_dir`` that replaces ``out_dir`` only
when complete (on a cluster, ``out_dir`` must be on storage every node sees). Same input and
config give byte-identical shards, quarantine and manifest, whatever the partitioning.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.config import ConfigError, CorpusConfig
from knowlm_ray.corpus.dedup import exact_dedup, near_dedup
from knowlm_ray.corpus.filters import annotate_batch
from knowlm_ray.corpus.samples import SampleBuilder, load_tokenizer
from knowlm_ray.corpus.schema import MALFORMED, OK, QUARANTINE_COLUMNS
from knowlm_ray.corpus.shards import sort_to_blocks, write_files
from knowlm_ray.corpus.sources import list_input_files, read_sources
from knowlm_ray.corpus.stats import partial_counts, summarise

QUARANTINE_ROWS_PER_FILE = 100_000
TOKENIZE_BATCH = 64  # documents per tokenizer call
ORDER = ["status", "doc_id", "sample"]
OUTPUT_COLUMNS = ["status", "doc_id", "sample", "source", "input_ids", *QUARANTINE_COLUMNS]


def select_output(batch: pa.Table) -> pa.Table:
    """map_batches UDF: the rows that are written somewhere (quarantine or shards)."""
    keep = pc.is_in(batch["status"], pa.array([MALFORMED, OK]))
    return batch.filter(keep).select(list(dict.fromkeys(OUTPUT_COLUMNS)))


def _partial_counts(table: pa.Table) -> list[dict]:
    return partial_counts(table).to_pylist()


def _entry(folder: str, info: dict) -> dict:
    return {"file": f"{folder}/{info['file']}", **{k: v for k, v in info.items()
                                                    if k not in ("file", "first", "last")}}


def _say(msg: str) -> None:
    print(f"[prepare_corpus] {msg}", file=sys.stderr, flush=True)


def _check_out_dir(out: Path) -> None:
    # Replacing out_dir deletes it: only ever replace an earlier output of this job.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists())):
        raise ConfigError(f"out_dir {out} exists and is not a prepare_corpus output "
                          "(no manifest.json); refusing to replace it")


def publish(staging: Path, out: Path) -> None:
    """Swap a complete staging dir into place; a reader never sees a half-written out_dir."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _num_partitions(cfg: CorpusConfig, ray) -> int:
    # Ray's default is 200 hash partitions: seconds of overhead on a small cluster.
    if cfg.num_partitions:
        return cfg.num_partitions
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def build_samples(cfg: CorpusConfig, files: list[dict], tokenizer: str):
    """The streaming part: read -> filter -> exact dedup -> [near dedup] -> split + tokenise."""
    import ray
    from ray.data import ActorPoolStrategy

    docs = read_sources(cfg.inputs, files)
    docs = docs.map_batches(annotate_batch, batch_format="pyarrow",
                            fn_kwargs={"filters": cfg.filters.model_dump()})
    if cfg.dedup.exact:
        docs = exact_dedup(docs, _num_partitions(cfg, ray))
    docs = near_dedup(docs, cfg.dedup.near)
    max_actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return docs.map_batches(
        SampleBuilder, batch_format="pyarrow", batch_size=TOKENIZE_BATCH,
        compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
        fn_constructor_kwargs={"tokenizer": tokenizer, "max_tokens": cfg.max_tokens,
                               "min_tokens": cfg.min_tokens})


def count(samples) -> tuple[dict, dict, dict]:
    """(stages, by_source, stats) of materialised samples: plain tasks over the blocks (a Ray
    Data execution would cost seconds more), only per-(source, status) sums reach the driver."""
    import ray

    task = ray.remote(num_cpus=0)(_partial_counts)
    parts = ray.get([task.remote(ref) for ref in samples.to_arrow_refs()])
    return summarise(row for part in parts for row in part)


def write_outputs(samples, stages: dict, staging: Path, cfg: CorpusConfig) -> tuple[list, list]:
    """Quarantine and shards from one sort: by status, "malformed" rows come before "ok" ones."""
    n_bad, n_ok = stages["malformed"], stages["samples"]
    refs, counts = ([], [])
    if n_bad + n_ok:
        refs, counts = sort_to_blocks(samples.map_batches(select_output, batch_format="pyarrow"), ORDER)
    if sum(counts) != n_bad + n_ok:
        raise RuntimeError(f"sorted {sum(counts)} rows, expected {n_bad} + {n_ok}")
    quarantine = write_files(refs, counts, staging / "quarantine", kind="jsonl", order_by=ORDER,
                             rows_per_file=QUARANTINE_ROWS_PER_FILE, start=0, stop=n_bad,
                             columns=list(QUARANTINE_COLUMNS))
    shards = write_files(refs, counts, staging / "shards", kind="arrow", order_by=ORDER,
                         rows_per_file=cfg.rows_per_shard, start=n_bad, stop=n_bad + n_ok,
                         pack_max_tokens=cfg.max_tokens if cfg.pack.mode == "greedy" else None)
    for written, status in ((quarantine, MALFORMED), (shards, OK)):
        if any(f["first"][0] != status or f["last"][0] != status for f in written):
            raise RuntimeError(f"a {status} output file holds rows of another status")
    return quarantine, shards


def run(cfg: CorpusConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to ``out_dir/manifest.json``)."""
    from knowlm_ray.runtime import init_ray

    t0 = time.time()
    init_ray()
    out = Path(cfg.out_dir).expanduser().resolve()
    _check_out_dir(out)
    tokenizer = cfg.tokenizer
    if Path(tokenizer).expanduser().exists():  # workers may run elsewhere: pass an absolute path
        tokenizer = str(Path(tokenizer).expanduser().resolve())
    try:
        load_tokenizer(tokenizer)  # fail here, with one clear error, not inside an actor
    except Exception as exc:
        problem = "cannot be loaded" if Path(tokenizer).exists() else "no such directory"
        raise ConfigError(f"tokenizer {cfg.tokenizer!r}: {problem} ({exc})") from exc
    files = list_input_files(cfg.inputs)  # a bad path fails before any Ray work starts
    _say(f"{len(files)} input files from {len(cfg.inputs)} sources")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        samples = build_samples(cfg, files, tokenizer).materialize()
        stages, by_source, stats = count(samples)
        _say(f"read {stages['read']} documents: {stages['malformed']} malformed, {stages['filtered']} "
             f"filtered, {stages['exact_dups']} exact duplicates -> {stages['documents']} documents, "
             f"{stages['samples']} samples ({time.time() - t0:.1f}s)")
        quarantine, shards = write_outputs(samples, stages, staging, cfg)
        stats["rows"] = sum(s["rows"] for s in shards)  # == samples unless packed
        manifest = {
            "stages": stages,
            "by_source": by_source,
            "stats": stats,
            "shards": [_entry("shards", s) for s in shards],
            "quarantine": [_entry("quarantine", q) for q in quarantine],
            "format": {"shards": "arrow-ipc-file", "columns": {"input_ids": "list<int32>",
                                                               "doc_id": "string", "source": "string"},
                       "order": "doc_id, sample", "pack": cfg.pack.mode},
            "config": cfg.model_dump(mode="json"),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(f"wrote {len(shards)} shards, {stages['tokens']} tokens to {out} ({time.time() - t0:.1f}s)")
    return manifest
