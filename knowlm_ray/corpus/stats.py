"""Manifest counts from the per-row ``status`` column: per-block partials, summed on the driver.

A document is counted once, on its row with ``sample <= 0`` (sample -1 for documents that never
reached tokenisation, sample 0 for tokenised ones), so ``read = malformed + filtered +
exact_dups + near_dups + documents`` holds per source.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.corpus.schema import EXACT_DUP, FILTERED, MALFORMED, NEAR_DUP, OK, SHORT

STAGE_KEYS = ("read", "malformed", "filtered", "exact_dups", "near_dups", "documents", "samples", "tokens")
STAT_KEYS = ("sentences_cut", "short_dropped", "short_dropped_tokens")


def partial_counts(batch: pa.Table) -> pa.Table:
    """map_batches UDF: SAMPLE_SCHEMA batch -> one row per (source, status) with sums."""
    t = pa.table({
        "source": batch["source"], "status": batch["status"],
        "docs": pc.cast(pc.less_equal(batch["sample"], 0), pa.int64()),
        "tokens": batch["n_tokens"], "cuts": batch["sentences_cut"],
    })
    g = t.group_by(["source", "status"]).aggregate(
        [("docs", "sum"), ("tokens", "sum"), ("cuts", "sum"), ([], "count_all")])
    return g.rename_columns({"docs_sum": "docs", "tokens_sum": "tokens", "cuts_sum": "cuts",
                             "count_all": "rows"})


def summarise(partials: Iterable[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """Partial rows -> (stages, by_source, stats)."""
    acc: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for p in partials:
        cell = acc[p["source"]][p["status"]]
        for k in ("docs", "tokens", "cuts", "rows"):
            cell[k] += int(p[k] or 0)
    by_source, stats = {}, dict.fromkeys(STAT_KEYS, 0)
    for source in sorted(acc):
        s = acc[source]
        by_source[source] = {
            "read": sum(c["docs"] for c in s.values()),
            "malformed": s[MALFORMED]["docs"],
            "filtered": s[FILTERED]["docs"],
            "exact_dups": s[EXACT_DUP]["docs"],
            "near_dups": s[NEAR_DUP]["docs"],
            "documents": s[OK]["docs"] + s[SHORT]["docs"],
            "samples": s[OK]["rows"],
            "tokens": s[OK]["tokens"],
        }
        stats["sentences_cut"] += sum(c["cuts"] for c in s.values())
        stats["short_dropped"] += s[SHORT]["rows"]
        stats["short_dropped_tokens"] += s[SHORT]["tokens"]
    stages = {k: sum(v[k] for v in by_source.values()) for k in STAGE_KEYS}
    return stages, by_source, stats
