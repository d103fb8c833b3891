"""Corpus preparation on Ray Data (``jobs/prepare_corpus.py``; entry point ``pipeline.run``).

sources (readers; text: converters, normalisation) -> filters (+ blocklists/) -> dedup (exact +
MinHash LSH) -> split (sentences, greedy samples) -> samples (tokenise) -> pack (greedy, doc_starts)
-> shards (deterministic Arrow IPC writer and reader) + stats (manifest counts).
"""
from knowlm_ray.corpus.shards import iter_samples, read_shards

__all__ = ["iter_samples", "read_shards"]
