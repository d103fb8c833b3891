"""Exact dedup, distributed: hash-shuffle on the normalised-text key, keep the smallest doc_id.

Rows are grouped by ``key`` (non-ok rows carry a unique key, so they pass through alone); in
each group the row with the smallest ``doc_id`` stays ``ok`` and the others become
``exact_dup``. Which copy survives therefore does not depend on partitioning or task order.
Near-dedup (MinHash) is not implemented yet; ``dedup.near: true`` logs that and skips it.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from knowlm_ray.corpus.schema import DOC_SCHEMA, EXACT_DUP, OK

log = logging.getLogger(__name__)


def keep_first(group: pa.Table) -> pa.Table:
    """map_groups UDF (plain Python): one key group -> the same rows, duplicates marked."""
    if group.num_rows <= 1:
        return group
    group = group.sort_by([("doc_id", "ascending")])
    rows = group.to_pylist()
    first = rows[0]["doc_id"]
    for row in rows[1:]:
        if row["status"] == OK:
            row.update(status=EXACT_DUP, reason=f"duplicate of {first}", text="")
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def exact_dedup(ds, num_partitions: int):
    return ds.groupby("key", num_partitions=num_partitions).map_groups(keep_first, batch_format="pyarrow")


def near_dedup(ds, enabled: bool):
    if enabled:
        log.warning("dedup.near is not implemented yet (MinHash comes in a later issue): skipped, "
                    "near_dups stays 0")
    return ds

