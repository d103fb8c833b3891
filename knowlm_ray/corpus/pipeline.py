"""``prepare_corpus``: raw corpora -> deduplicated, split, tokenised Arrow shards + manifest.

Ray Data stages, streaming into the final sort (with dedup on, the documents are materialised
once before it; the object store spills to disk; the driver only ever sees file lists, counts,
dedup pairs, the signatures of candidate pairs and summaries). Without dedup the whole job is one
Ray Data execution, with it three:

    read + convert (one task per file) -> filters + dedup key (+ MinHash signature when near
    dedup is on) -> [materialised] -> dedup (corpus/dedup.py: narrow (bucket, doc_id) rows for the
    exact key and each LSH band -> one sort shuffle -> pairs to the driver -> signatures of the
    candidates fetched and verified -> union-find -> marks back to the workers) -> sentence split +
    tokenise (tasks, one cached tokenizer per worker; or an actor pool; short tails per
    ``split.tail``) -> per-source ``mix`` caps / shares (optional: per-document keys to the driver,
    documents past a source's cut marked ``capped``; see corpus/mix.py) -> one sort of every row
    by (rank, doc_id, sample) -> counts (one task per sorted block) -> quarantine/ (malformed
    lines) + dropped/ (one line per filtered or duplicate document and per short sample, with the
    reason: an audit trail) + shards/ (packed by the shard writers when pack.mode is greedy)

Rows are never dropped on the way, only given a status, so the counts in the manifest are
exact. Output goes to a hidden staging dir next to ``out_dir`` that replaces ``out_dir`` only
when complete (on a cluster, ``out_dir`` must be on storage every node sees). Same input and
config give byte-identical shards, quarantine, dropped/ and manifest, whatever the partitioning.

Shuffles are sorts (range partitioning on plain tasks), not Ray's hash-shuffle ``groupby``:
that starts aggregator actors per shuffle, seconds each on a small cluster (measured here:
a 1,000-row groupby took 12-16 s with the hash shuffle, 0.3-1.8 s with the sort shuffle).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.atomic import publish_dir
from knowlm_ray.config import ConfigError, CorpusConfig
from knowlm_ray.corpus.dedup import dedup
from knowlm_ray.corpus.filters import annotate_batch, load_blocklist
from knowlm_ray.corpus.mix import apply_mix
from knowlm_ray.corpus.samples import SampleBuilder, build_samples_batch, load_tokenizer
from knowlm_ray.corpus.schema import DROPPED_COLUMNS, MALFORMED, OK, QUARANTINE_COLUMNS
from knowlm_ray.corpus.shards import sort_to_blocks, write_files
from knowlm_ray.corpus.sources import list_input_files, read_sources
from knowlm_ray.corpus.stats import partial_counts, summarise

QUARANTINE_ROWS_PER_FILE = 100_000
TOKENIZE_BATCH = 64  # documents per tokenizer call
ORDER = ["rank", "doc_id", "sample"]
COUNT_COLUMNS = ["status", "source", "reason", "sample", "n_tokens", "sentences_cut", "tail", "backfill"]
OUTPUT_COLUMNS = ["rank", "doc_id", "input_ids", *COUNT_COLUMNS, *QUARANTINE_COLUMNS, *DROPPED_COLUMNS]
# Sort rank of each output: quarantine (malformed lines), dropped/ (audit of filtered and
# duplicate documents and of short samples), shards (ok samples).
RANK_QUARANTINE, RANK_DROPPED, RANK_SHARDS = 0, 1, 2


def select_output(batch: pa.Table) -> pa.Table:
    """map_batches UDF: every row with its output rank, in the columns outputs and counts need."""
    status = batch["status"]
    rank = pc.if_else(pc.equal(status, MALFORMED), RANK_QUARANTINE,
                      pc.if_else(pc.equal(status, OK), RANK_SHARDS, RANK_DROPPED))
    batch = batch.append_column("rank", pc.cast(rank, pa.int8()))
    return batch.select(list(dict.fromkeys(OUTPUT_COLUMNS)))


def _partial_counts(table: pa.Table, max_tokens: int, short_tail: float) -> list[dict]:
    return partial_counts(table, max_tokens, short_tail).to_pylist()


def _entry(folder: str, info: dict) -> dict:
    return {"file": f"{folder}/{info['file']}", **{k: v for k, v in info.items()
                                                    if k not in ("file", "first", "last")}}


def _columns(cfg: CorpusConfig) -> dict[str, str]:
    cols = {"input_ids": "list<int32>", "doc_id": "string", "source": "string"}
    if cfg.pack.mode == "greedy":
        cols["doc_starts"] = "list<int32>"  # segment starts in the row (see corpus/pack.py)
    return cols


def _say(msg: str) -> None:
    print(f"[prepare_corpus] {msg}", file=sys.stderr, flush=True)


def _check_out_dir(out: Path) -> None:
    # Replacing out_dir deletes it: only ever replace an earlier output of this job.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists())):
        raise ConfigError(f"out_dir {out} exists and is not a prepare_corpus output "
                          "(no manifest.json); refusing to replace it")


def _num_partitions(cfg: CorpusConfig, ray) -> int:
    # Ray's default is 200 hash partitions: seconds of overhead on a small cluster.
    if cfg.num_partitions:
        return cfg.num_partitions
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def build_samples(cfg: CorpusConfig, files: list[dict], tokenizer: str,
                  blocklist: list[str] | None = None) -> tuple[Any, dict]:
    """The streaming part: read -> filter -> exact + near dedup -> split + tokenise.
    Returns (samples dataset, near-dedup stats)."""
    import ray
    from ray.data import ActorPoolStrategy

    docs = read_sources(cfg.inputs, files)
    docs = docs.map_batches(annotate_batch, batch_format="pyarrow",
                            fn_kwargs={"filters": cfg.filters.model_dump(), "blocklist": blocklist or []})
    docs, near_stats = dedup(docs, cfg.dedup, cfg.seed, _num_partitions(cfg, ray))
    if near_stats:
        _say(f"near dedup: {near_stats['bands']} bands x {near_stats['rows']} rows, "
             f"{near_stats['candidate_pairs']} candidate pairs, {near_stats['edges']} edges -> "
             f"{near_stats['near_dups']} near duplicates in {near_stats['clusters']} clusters")
    split_kwargs = {"tail": cfg.split.tail, "short_tail": cfg.split.short_tail}
    if cfg.tokenize_with == "actors":
        max_actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
        samples = docs.map_batches(
            SampleBuilder, batch_format="pyarrow", batch_size=TOKENIZE_BATCH,
            compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
            fn_constructor_kwargs={"tokenizer": tokenizer, "max_tokens": cfg.max_tokens,
                                   "min_tokens": cfg.min_tokens, **split_kwargs})
    else:
        samples = docs.map_batches(
            build_samples_batch, batch_format="pyarrow", batch_size=TOKENIZE_BATCH,
            fn_kwargs={"tokenizer": tokenizer, "max_tokens": cfg.max_tokens, "min_tokens": cfg.min_tokens,
                       **split_kwargs})
    return samples, near_stats


def count(refs: list, max_tokens: int = 0, short_tail: float = 0.25) -> tuple[dict, dict, dict]:
    """(stages, by_source, stats) of the sorted blocks: plain tasks over the blocks (a Ray Data
    execution would cost seconds more), only per-(source, status) sums reach the driver."""
    from knowlm_ray.runtime import map_refs

    parts = map_refs(_partial_counts, refs, max_tokens, short_tail)
    return summarise(row for part in parts for row in part)


def write_outputs(refs: list, counts: list[int], stages: dict, stats: dict, staging: Path,
                  cfg: CorpusConfig) -> tuple[list, list, list]:
    """Quarantine, dropped/ and shards from the blocks sorted by (rank, doc_id, sample)."""
    n_bad, n_ok = stages["malformed"], stages["samples"]
    n_drop = (stages["filtered"] + stages["exact_dups"] + stages["near_dups"] + stats["short_dropped"]
              + stats["capped_samples"])
    if sum(counts) != n_bad + n_drop + n_ok:
        raise RuntimeError(f"sorted {sum(counts)} rows, expected {n_bad} + {n_drop} + {n_ok}")
    quarantine = write_files(refs, counts, staging / "quarantine", kind="jsonl", order_by=ORDER,
                             rows_per_file=QUARANTINE_ROWS_PER_FILE, start=0, stop=n_bad,
                             columns=list(QUARANTINE_COLUMNS))
    dropped = write_files(refs, counts, staging / "dropped", kind="jsonl", order_by=ORDER,
                          rows_per_file=QUARANTINE_ROWS_PER_FILE, start=n_bad, stop=n_bad + n_drop,
                          columns=list(DROPPED_COLUMNS)) if cfg.write_dropped and n_drop else []
    shards = write_files(refs, counts, staging / "shards", kind="arrow", order_by=ORDER,
                         rows_per_file=cfg.rows_per_shard, start=n_bad + n_drop, stop=n_bad + n_drop + n_ok,
                         pack_max_tokens=cfg.max_tokens if cfg.pack.mode == "greedy" else None,
                         pack_split=cfg.pack.split_samples)
    for written, rank in ((quarantine, RANK_QUARANTINE), (dropped, RANK_DROPPED), (shards, RANK_SHARDS)):
        if any(f["first"][0] != rank or f["last"][0] != rank for f in written):
            raise RuntimeError(f"an output file of rank {rank} holds rows of another rank")
    return quarantine, dropped, shards


def run(cfg: CorpusConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to ``out_dir/manifest.json``)."""
    from knowlm_ray.runtime import init_ray

    t0 = time.time()
    ray = init_ray()
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
    blocklist, blocklist_info = ([], [])
    if cfg.filters.blocklist.enabled:
        blocklist, blocklist_info = load_blocklist(cfg.filters.blocklist.files)
    _say(f"{len(files)} input files from {len(cfg.inputs)} sources")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        samples, near_stats = build_samples(cfg, files, tokenizer, blocklist)
        mix = None
        if cfg.mix.active:  # per-source caps / shares: documents past the cut become "capped"
            samples, mix = apply_mix(samples, cfg.mix, cfg.seed)
            _say("mix: " + ", ".join(f"{s} {v['documents_before']} -> {v['documents_after']} documents"
                                     for s, v in mix["sources"].items()))
        # one execution: tokenise, then sort every row by (rank, doc_id, sample); the counts come
        # from the sorted blocks, the outputs are slices of them
        refs, counts = sort_to_blocks(samples.map_batches(select_output, batch_format="pyarrow"), ORDER,
                                      _num_partitions(cfg, ray))
        stages, by_source, stats = count(refs, cfg.max_tokens, cfg.split.short_tail)
        filters = stats.pop("filters")
        for src in cfg.inputs:  # the sampling weight training mixes sources by (first input wins)
            by_source.get(src.source, {}).setdefault("weight", src.weight)
        capped = f", {stages['capped']} over mix caps" if mix else ""
        _say(f"read {stages['read']} documents: {stages['malformed']} malformed, {stages['filtered']} "
             f"filtered, {stages['exact_dups']} exact + {stages['near_dups']} near duplicates"
             f"{capped} -> "
             f"{stages['documents']} documents, {stages['samples']} samples ({time.time() - t0:.1f}s)")
        quarantine, dropped, shards = write_outputs(refs, counts, stages, stats, staging, cfg)
        stats["rows"] = sum(s["rows"] for s in shards)  # == samples unless packed
        manifest = {
            "stages": stages,
            "filters": filters,
            "by_source": by_source,
            "stats": stats,
            "near_dedup": near_stats,
            "mix": mix,
            "blocklists": blocklist_info,
            "shards": [_entry("shards", s) for s in shards],
            "quarantine": [_entry("quarantine", q) for q in quarantine],
            "dropped": [_entry("dropped", d) for d in dropped],
            "format": {"shards": "arrow-ipc-file", "columns": _columns(cfg),
                       "order": "doc_id, sample", "pack": cfg.pack.mode},
            "config": cfg.model_dump(mode="json"),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(f"wrote {len(shards)} shards, {stages['tokens']} tokens to {out} ({time.time() - t0:.1f}s)")
    return manifest
