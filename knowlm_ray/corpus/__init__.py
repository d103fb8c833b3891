"""Corpus preparation on Ray Data (``jobs/prepare_corpus.py``; entry point ``pipeline.run``).

sources (readers) -> filters -> dedup -> split (sentences, greedy samples) -> samples (tokenise)
-> pack -> shards (deterministic Arrow IPC writer and reader) + stats (manifest counts).
"""
from knowlm_ray.corpus.shards import iter_samples, read_shards

__all__ = ["iter_samples", "read_shards"]
