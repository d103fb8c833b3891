"""``prepare_corpus``: raw corpora -> deduplicated, split, tokenised Arrow shards + manifest.

Ray Data stages, streaming to the writers (with dedup on, the documents are materialised
once before it; the object store spills to disk; the driver only ever sees file lists, counts,
dedup pairs, the signatures of candidate pairs and summaries). Without dedup the whole job is one
Ray Data execution, with it two and plain Ray tasks between them (a ``mix`` adds one):

    read + convert (tasks of ~8 MiB of input, smaller at the end: byte ranges of big files) -> filters + dedup key
    (+ MinHash signature when near dedup is on; all three fused in one task) -> [materialised]
    -> dedup (corpus/dedup.py: narrow (bucket, doc_id) rows for the exact key and each LSH band
    -> one hash shuffle on plain tasks -> pairs to the driver -> signatures of the candidates
    fetched and verified -> union-find -> marks back to the workers) -> sentence split +
    tokenise (tasks, one cached tokenizer per worker; or an actor pool; short tails per
    ``split.tail``) -> per-source ``mix`` caps / shares (optional: per-document keys to the driver,
    documents past a source's cut marked ``capped``; see corpus/mix.py) -> the output blocks, in
    input order, each split by output and counted as it streams out (one task per block) ->
    quarantine/ (malformed lines) + dropped/ (one line per filtered or duplicate document and per
    short sample, with the reason: an audit trail) + shards/ (packed by the shard writers when
    pack.mode is greedy)

Rows are never dropped on the way, only given a status, so the counts in the manifest are
exact. Output goes to a hidden staging dir next to ``out_dir`` that replaces ``out_dir`` only
when complete (on a cluster, ``out_dir`` must be on storage every node sees). Same input and
config give byte-identical shards, quarantine, dropped/ and manifest, whatever the partitioning:
every execution keeps its blocks in input order (Ray Data's ``preserve_order``), and the outputs
are cut from that stream by row counts, never by block boundaries. (A sort of every row by
doc_id did the same at the price of a shuffle of all tokens: ~15 % of a 20k-document run.)

The one shuffle (dedup's buckets) runs on plain Ray tasks, not Ray Data's: its hash-shuffle
``groupby`` starts aggregator actors (a 1,000-row groupby took 12-16 s here), and its sort starts
worker pools of its own for the map and the reduce tasks (new processes, ~1.5 s each to start).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from knowlm_ray.atomic import atomic_dir
from knowlm_ray.config import ConfigError, CorpusConfig
from knowlm_ray.corpus.dedup import dedup
from knowlm_ray.corpus.filters import annotate_batch, load_blocklist
from knowlm_ray.corpus.mix import apply_mix
from knowlm_ray.corpus.samples import SampleBuilder, build_samples_batch
from knowlm_ray.corpus.schema import DROPPED_COLUMNS, MALFORMED, OK, QUARANTINE_COLUMNS
from knowlm_ray.corpus.shards import FileWriter
from knowlm_ray.corpus.sources import list_input_files, read_sources
from knowlm_ray.corpus.stats import partial_counts, summarise

QUARANTINE_ROWS_PER_FILE = 100_000
TOKENIZE_BATCH = 64  # documents per tokenizer call
COUNT_COLUMNS = ["status", "source", "reason", "sample", "n_tokens", "sentences_cut", "tail", "backfill"]
OUTPUT_COLUMNS = ["rank", "doc_id", "input_ids", *COUNT_COLUMNS, *QUARANTINE_COLUMNS, *DROPPED_COLUMNS]
# Sort rank of each output: quarantine (malformed lines), dropped/ (audit of filtered and
# duplicate documents and of short samples), shards (ok samples).
RANK_QUARANTINE, RANK_DROPPED, RANK_SHARDS = 0, 1, 2
RANKS = (RANK_QUARANTINE, RANK_DROPPED, RANK_SHARDS)


def select_output(batch: pa.Table) -> pa.Table:
    """map_batches UDF: every row with its output rank, in the columns outputs and counts need."""
    status = batch["status"]
    rank = pc.if_else(
        pc.equal(status, MALFORMED), RANK_QUARANTINE, pc.if_else(pc.equal(status, OK), RANK_SHARDS, RANK_DROPPED)
    )
    batch = batch.append_column("rank", pc.cast(rank, pa.int8()))
    return batch.select(list(dict.fromkeys(OUTPUT_COLUMNS)))


def _split_block(table: pa.Table, max_tokens: int, short_tail: float):
    """One output block -> its rows for quarantine/, dropped/ and shards/ (in order), their
    numbers, and the block's partial counts (the body of a Ray task with five returns)."""
    if not table.num_rows:  # an empty block may come without columns; no file reads from it
        return (*[table] * len(RANKS), [0] * len(RANKS), [])
    parts = [table.filter(pc.equal(table["rank"], rank)) for rank in RANKS]
    return (*parts, [p.num_rows for p in parts], partial_counts(table, max_tokens, short_tail).to_pylist())


def split_outputs(refs: Iterable, max_tokens: int, short_tail: float, writers: list[FileWriter | None]) -> list:
    """Output blocks (in input order; an iterator of refs is consumed as it yields) -> each block's
    rows for quarantine, dropped and shards handed to that output's writer (None: not written) as
    soon as its counts are in, so files are written while the execution runs; returns every
    block's partial counts. Plain tasks, one per block; only the numbers reach the driver."""
    import ray

    task = ray.remote(num_returns=len(RANKS) + 2)(_split_block)
    out: list = []
    fed = 0

    def feed(wait: bool) -> int:
        done = fed
        while done < len(out) and (wait or ray.wait([out[done][len(RANKS)]], timeout=0)[0]):
            for part, rows, writer in zip(out[done], ray.get(out[done][len(RANKS)]), writers):
                if writer is not None:
                    writer.add(part, rows)
            done += 1
        return done

    for ref in refs:
        out.append(task.remote(ref, max_tokens, short_tail))
        fed = feed(wait=False)
    feed(wait=True)
    return [row for part in ray.get([o[len(RANKS) + 1] for o in out]) for row in part]


def _entry(folder: str, info: dict) -> dict:
    return {"file": f"{folder}/{info['file']}", **{k: v for k, v in info.items() if k != "file"}}


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
        raise ConfigError(
            f"out_dir {out} exists and is not a prepare_corpus output (no manifest.json); refusing to replace it"
        )


def _num_partitions(cfg: CorpusConfig, ray) -> int:
    # Ray's default is 200 hash partitions: seconds of overhead on a small cluster.
    if cfg.num_partitions:
        return cfg.num_partitions
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def build_samples(
    cfg: CorpusConfig, files: list[dict], tokenizer: str, blocklist: list[str] | None = None
) -> tuple[Any, dict]:
    """The streaming part: read -> filter -> exact + near dedup -> split + tokenise.
    Returns (samples dataset, near-dedup stats); with dedup on, the documents are read and
    deduplicated by then, the tokenising is left to the caller's execution."""
    import ray
    from ray.data import ActorPoolStrategy

    docs = read_sources(cfg.inputs, files)
    # Every execution keeps its blocks in input order (the datasets derived from this one copy its
    # context), so the outputs come out in a deterministic order without a sort of every row.
    docs.context.execution_options.preserve_order = True
    docs = docs.map_batches(
        annotate_batch,
        batch_format="pyarrow",
        fn_kwargs={"filters": cfg.filters.model_dump(), "blocklist": blocklist or []},
    )
    docs, near_stats = dedup(docs, cfg.dedup, cfg.seed, _num_partitions(cfg, ray))
    if near_stats:
        _say(
            f"near dedup: {near_stats['bands']} bands x {near_stats['rows']} rows, "
            f"{near_stats['candidate_pairs']} candidate pairs, {near_stats['edges']} edges -> "
            f"{near_stats['near_dups']} near duplicates in {near_stats['clusters']} clusters"
        )
    split_kwargs = {"tail": cfg.split.tail, "short_tail": cfg.split.short_tail}
    if cfg.tokenize_with == "actors":
        max_actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
        samples = docs.map_batches(
            SampleBuilder,
            batch_format="pyarrow",
            batch_size=TOKENIZE_BATCH,
            compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
            fn_constructor_kwargs={
                "tokenizer": tokenizer,
                "max_tokens": cfg.max_tokens,
                "min_tokens": cfg.min_tokens,
                **split_kwargs,
            },
        )
    else:
        samples = docs.map_batches(
            build_samples_batch,
            batch_format="pyarrow",
            batch_size=TOKENIZE_BATCH,
            fn_kwargs={
                "tokenizer": tokenizer,
                "max_tokens": cfg.max_tokens,
                "min_tokens": cfg.min_tokens,
                **split_kwargs,
            },
        )
    return samples, near_stats


def output_writers(staging: Path, cfg: CorpusConfig) -> list[FileWriter | None]:
    """Writers of quarantine/, dropped/ (None when ``write_dropped`` is off) and shards/."""
    for name in ("quarantine", "shards"):  # there even when empty
        (staging / name).mkdir()
    return [
        FileWriter(
            staging / "quarantine",
            kind="jsonl",
            rows_per_file=QUARANTINE_ROWS_PER_FILE,
            columns=list(QUARANTINE_COLUMNS),
        ),
        FileWriter(
            staging / "dropped", kind="jsonl", rows_per_file=QUARANTINE_ROWS_PER_FILE, columns=list(DROPPED_COLUMNS)
        )
        if cfg.write_dropped
        else None,
        FileWriter(
            staging / "shards",
            kind="arrow",
            rows_per_file=cfg.rows_per_shard,
            pack_max_tokens=cfg.max_tokens if cfg.pack.mode == "greedy" else None,
            pack_split=cfg.pack.split_samples,
        ),
    ]


def finish_outputs(writers: list[FileWriter | None], stages: dict, stats: dict) -> list[list[dict]]:
    """The files of quarantine/, dropped/ and shards/, once all are written; their rows checked
    against the counts."""
    n_drop = (
        stages["filtered"]
        + stages["exact_dups"]
        + stages["near_dups"]
        + stats["short_dropped"]
        + stats["capped_samples"]
    )
    for name, writer, want in zip(
        ("quarantine", "dropped", "shards"), writers, (stages["malformed"], n_drop, stages["samples"])
    ):
        if writer is not None and writer.rows != want:
            raise RuntimeError(f"{name}: {writer.rows} rows, the counts say {want}")
    return [writer.finish() if writer is not None else [] for writer in writers]


# Files a tokenizer directory holds one or more of (transformers' fast, SentencePiece and
# vocabulary formats).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def _precheck_tokenizer(tokenizer: str, given: str) -> None:
    """What the driver can check without importing transformers (and torch: ~1.5 s of CPU): the
    directory, its tokenizer files, and that its JSON files parse."""
    path = Path(tokenizer)
    if not path.is_dir():
        raise ConfigError(f"tokenizer {given!r}: no such directory ({tokenizer})")
    found = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not found:
        raise ConfigError(f"tokenizer {given!r}: cannot be loaded (it holds none of {', '.join(TOKENIZER_FILES)})")
    for name in found:
        try:
            if name == "tokenizer.json":  # the fast tokenizer itself (the tokenizers library: ms to import)
                Tokenizer.from_file(str(path / name))
            elif name.endswith(".json"):
                json.loads((path / name).read_text(encoding="utf-8"))
        except Exception as exc:
            raise ConfigError(f"tokenizer {given!r}: cannot be loaded ({name}: {exc})") from None


def _config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError behind an error from a Ray Data task. On its way to the driver it is
    wrapped (RayTaskError, UserCodeException) and its own object lost, but its line stays in the
    remote traceback the error carries."""
    if isinstance(exc, ConfigError) and getattr(exc, "cause", None) is None:
        return exc
    found = re.findall(r"^knowlm_ray\.config\.ConfigError: (.+)$", str(exc), flags=re.MULTILINE)
    return ConfigError(found[-1]) if found else None


def run(cfg: CorpusConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to ``out_dir/manifest.json``).
    A ConfigError raised in a task (a tokenizer that does not load) comes out as itself."""
    try:
        return _run(cfg)
    except Exception as exc:
        err = _config_error(exc)
        if err is None or err is exc:
            raise
        raise ConfigError(str(err)) from None


def _run(cfg: CorpusConfig) -> dict[str, Any]:
    from knowlm_ray.runtime import init_ray, start_data_actors

    t0 = time.time()
    out = Path(cfg.out_dir).expanduser().resolve()
    _check_out_dir(out)
    tokenizer = cfg.tokenizer
    if Path(tokenizer).expanduser().exists():  # workers may run elsewhere: pass an absolute path
        tokenizer = str(Path(tokenizer).expanduser().resolve())
    # A bad tokenizer is one clear error: the driver checks its files before any Ray work; one that
    # still fails to load fails the first tokenising task, with a ConfigError shown as it is. The
    # driver never imports transformers: on the driver (even on a thread) its ~1.5 s of imports
    # delayed the first reads.
    _precheck_tokenizer(tokenizer, cfg.tokenizer)
    files = list_input_files(cfg.inputs)  # a bad path fails before any Ray work starts
    blocklist, blocklist_info = ([], [])
    if cfg.filters.blocklist.enabled:
        blocklist, blocklist_info = load_blocklist(cfg.filters.blocklist.files)
    _say(f"{len(files)} input files from {len(cfg.inputs)} sources")
    init_ray()  # after the checks above: a bad config fails in a second, not after Ray's start-up
    start_data_actors()  # the config is good: start Ray Data's actors while the reads are planned

    with atomic_dir(out) as staging:  # published as out_dir only when complete
        samples, near_stats = build_samples(cfg, files, tokenizer, blocklist)
        mix = None
        if cfg.mix.active:  # per-source caps / shares: documents past the cut become "capped"
            samples, mix = apply_mix(samples, cfg.mix, cfg.seed)
            _say(
                "mix: "
                + ", ".join(
                    f"{s} {v['documents_before']} -> {v['documents_after']} documents"
                    for s, v in mix["sources"].items()
                )
            )
        # one execution: tokenise; its blocks stream back in input order (preserve_order), each
        # split by output as soon as it is made, the files written as their rows come in; the
        # counts come from the same tasks
        blocks = (
            ref
            for bundle in samples.map_batches(select_output, batch_format="pyarrow").iter_internal_ref_bundles()
            for ref in bundle.block_refs
        )
        writers = output_writers(staging, cfg)
        partials = split_outputs(blocks, cfg.max_tokens, cfg.split.short_tail, writers)
        stages, by_source, stats = summarise(partials)
        filters = stats.pop("filters")
        for src in cfg.inputs:  # the sampling weight training mixes sources by (first input wins)
            by_source.get(src.source, {}).setdefault("weight", src.weight)
        capped = f", {stages['capped']} over mix caps" if mix else ""
        _say(
            f"read {stages['read']} documents: {stages['malformed']} malformed, {stages['filtered']} "
            f"filtered, {stages['exact_dups']} exact + {stages['near_dups']} near duplicates"
            f"{capped} -> "
            f"{stages['documents']} documents, {stages['samples']} samples ({time.time() - t0:.1f}s)"
        )
        quarantine, dropped, shards = finish_outputs(writers, stages, stats)
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
            "format": {
                "shards": "arrow-ipc-file",
                "columns": _columns(cfg),
                "order": "input (sources as listed, files by name, lines), sample",
                "pack": cfg.pack.mode,
            },
            "config": cfg.model_dump(mode="json"),
        }
        (staging / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    _say(f"wrote {len(shards)} shards, {stages['tokens']} tokens to {out} ({time.time() - t0:.1f}s)")
    return manifest
