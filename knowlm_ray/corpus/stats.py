"""Manifest counts from the per-row ``status`` column: per-block partials, summed on the driver.

A document is counted once, on its row with ``sample <= 0`` (sample -1 for documents that never
reached tokenisation, sample 0 for tokenised ones), so ``read = malformed + filtered +
exact_dups + near_dups + capped + documents`` holds per source (``capped``: documents over a
``mix`` cap; 0 without one). Filtered documents are also counted per
filter (the reason's ``"<filter>:"`` prefix), so ``filtered = sum(filters.values())``.

Short tails: the last sample of a document that needed several samples is its *tail*; how short
ones are handled is ``split.tail`` (see ``split.py``), measured here: ``tail_samples`` /
``tail_tokens`` (kept tails), ``short_tail_samples`` (kept tails under ``split.short_tail`` x
``max_tokens``), ``backfill_tokens`` (tokens back-filled tails repeat). Dropped tails count in
``short_dropped``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.corpus.filters import FILTER_NAMES
from knowlm_ray.corpus.schema import CAPPED, EXACT_DUP, FILTERED, MALFORMED, NEAR_DUP, OK, SHORT
from knowlm_ray.corpus.split import short_tail_tokens

STAGE_KEYS = ("read", "malformed", "filtered", "exact_dups", "near_dups", "capped", "documents", "samples", "tokens")
STAT_KEYS = (
    "sentences_cut",
    "short_dropped",
    "short_dropped_tokens",
    "tail_samples",
    "tail_tokens",
    "short_tail_samples",
    "backfill_tokens",
    "capped_samples",
)
_SUMS = ("docs", "tokens", "cuts", "rows", "tails", "tail_tokens", "short_tails", "backfill")


def partial_counts(batch: pa.Table, max_tokens: int = 0, short_tail: float = 0.25) -> pa.Table:
    """map_batches UDF: SAMPLE_SCHEMA batch -> one row per (source, status, filter) with sums."""
    filtered = pc.equal(batch["status"], FILTERED)
    prefix = pc.list_element(pc.split_pattern(pc.fill_null(batch["reason"], ""), ":", max_splits=1), 0)
    tail = pc.and_(pc.equal(batch["status"], OK), pc.fill_null(batch["tail"], False))
    short = pc.and_(tail, pc.less(batch["n_tokens"], short_tail_tokens(max_tokens, short_tail)))
    zero = pa.scalar(0, pa.int64())
    t = pa.table(
        {
            "source": batch["source"],
            "status": batch["status"],
            "filter": pc.if_else(filtered, prefix, ""),
            "docs": pc.cast(pc.less_equal(batch["sample"], 0), pa.int64()),
            "tokens": batch["n_tokens"],
            "cuts": batch["sentences_cut"],
            "tails": pc.cast(tail, pa.int64()),
            "tail_tokens": pc.if_else(tail, batch["n_tokens"], zero),
            "short_tails": pc.cast(short, pa.int64()),
            "backfill": pc.if_else(tail, pc.fill_null(batch["backfill"], 0), zero),
        }
    )
    g = t.group_by(["source", "status", "filter"]).aggregate(
        [(k, "sum") for k in _SUMS if k != "rows"] + [([], "count_all")]
    )
    return g.rename_columns({**{f"{k}_sum": k for k in _SUMS if k != "rows"}, "count_all": "rows"})


def summarise(partials: Iterable[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """Partial rows -> (stages, by_source, stats). ``by_source[s]["filters"]`` and
    ``stats["filters"]`` count filtered documents per filter (every filter listed, 0 included)."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    per_filter: dict = defaultdict(lambda: dict.fromkeys(FILTER_NAMES, 0))
    for p in partials:
        cell = acc[p["source"]][p["status"]]
        for k in _SUMS:
            cell[k] += int(p.get(k) or 0)
        if p["status"] == FILTERED:
            name = p.get("filter") or "other"
            per_filter[p["source"]][name] = per_filter[p["source"]].get(name, 0) + int(p.get("docs") or 0)
    by_source, stats = {}, dict.fromkeys(STAT_KEYS, 0)
    totals = dict.fromkeys(FILTER_NAMES, 0)
    for source in sorted(acc):
        s = acc[source]
        by_source[source] = {
            "read": sum(c["docs"] for c in s.values()),
            "malformed": s[MALFORMED]["docs"],
            "filtered": s[FILTERED]["docs"],
            "exact_dups": s[EXACT_DUP]["docs"],
            "near_dups": s[NEAR_DUP]["docs"],
            "capped": s[CAPPED]["docs"],
            "documents": s[OK]["docs"] + s[SHORT]["docs"],
            "samples": s[OK]["rows"],
            "tokens": s[OK]["tokens"],
            "filters": dict(per_filter[source]),
        }
        for name, n in per_filter[source].items():
            totals[name] = totals.get(name, 0) + n
        stats["sentences_cut"] += sum(c["cuts"] for c in s.values())
        stats["short_dropped"] += s[SHORT]["rows"]
        stats["short_dropped_tokens"] += s[SHORT]["tokens"]
        stats["tail_samples"] += s[OK]["tails"]
        stats["tail_tokens"] += s[OK]["tail_tokens"]
        stats["short_tail_samples"] += s[OK]["short_tails"]
        stats["backfill_tokens"] += s[OK]["backfill"]
        stats["capped_samples"] += s[CAPPED]["rows"]
    stages = {k: sum(v[k] for v in by_source.values()) for k in STAGE_KEYS}
    stats["filters"] = totals
    return stages, by_source, stats
