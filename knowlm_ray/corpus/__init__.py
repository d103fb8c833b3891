"""Corpus preparation on Ray Data (``jobs/prepare_corpus.py``; entry point ``pipeline.run``).

sources (readers; text: converters, normalisation) -> filters (+ blocklists/) -> dedup (exact +
MinHash LSH) -> split (sentences, greedy samples, short tails) -> samples (tokenise) -> mix
(per-source caps / shares) -> pack (greedy, doc_starts) -> shards (deterministic Arrow IPC writer;
``ShardReader``: memory-mapped random access, what training reads) + stats (manifest counts).
inspect / megatron / cli: ``knowlm corpus inspect`` and ``knowlm corpus export-megatron``.
"""

from knowlm_ray.corpus.shards import ShardReader, iter_samples, read_shards

__all__ = ["ShardReader", "iter_samples", "read_shards"]
