"""Prepare a pretraining corpus: read, filter, dedup, split, tokenize -> Arrow shards + manifest.

    python jobs/prepare_corpus.py --config jobs/configs/tiny_corpus.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/prepare_corpus.py --config jobs/configs/tiny_corpus.yaml

Writes out_dir/shards/part-NNNNN.arrow, out_dir/quarantine/*.jsonl (malformed lines),
out_dir/dropped/*.jsonl (why each filtered or duplicate document was dropped) and
out_dir/manifest.json (see knowlm_ray/corpus/pipeline.py). Same input + config => byte-identical
shards and manifest.
"""
from __future__ import annotations

import sys

from knowlm_ray.config import ConfigError, CorpusConfig, parse_job_args
from knowlm_ray.corpus.pipeline import run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_args(CorpusConfig, argv, description=__doc__)
    try:
        manifest = run(cfg)
    except (ConfigError, FileNotFoundError) as exc:  # user-caused: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    s = manifest["stages"]
    by_filter = ", ".join(f"{k} {v}" for k, v in manifest["filters"].items() if v)
    capped = f", {s['capped']} over mix caps" if s.get("capped") else ""
    print(f"prepare_corpus: {s['read']} read, {s['malformed']} malformed, {s['filtered']} filtered"
          f"{f' ({by_filter})' if by_filter else ''}, {s['exact_dups']} exact dups, {s['near_dups']} near dups"
          f"{capped} "
          f"-> {s['documents']} documents, {s['samples']} samples, {s['tokens']} tokens in "
          f"{len(manifest['shards'])} shards at {cfg.out_dir}")
    return manifest


if __name__ == "__main__":
    main()
