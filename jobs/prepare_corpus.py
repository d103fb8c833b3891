"""Prepare a pretraining corpus: read, filter, dedup, split, tokenize -> Arrow shards + manifest.

    python jobs/prepare_corpus.py --config jobs/configs/tiny_corpus.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/prepare_corpus.py --config jobs/configs/tiny_corpus.yaml

Writes out_dir/shards/part-NNNNN.arrow, out_dir/quarantine/*.jsonl (malformed lines),
out_dir/dropped/*.jsonl (why each filtered or duplicate document was dropped) and
out_dir/manifest.json (see knowlm_ray/corpus/pipeline.py). Same input + config => byte-identical
shards and manifest.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("prepare-corpus", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["prepare-corpus"]


if __name__ == "__main__":
    main()
