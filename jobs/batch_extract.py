"""Knowledge-graph extraction over a corpus: Ray Data blocks, an actor pool of models, resumable.

    python jobs/batch_extract.py --config jobs/configs/tiny_extract.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/batch_extract.py --config jobs/configs/tiny_extract.yaml

input: a jsonl file / directory (``text_field``) or corpus Arrow shards (decoded with the model's
tokenizer). Writes out_dir/records.jsonl (IE records), triples.parquet and summary.json; a re-run
skips the blocks already written (see knowlm_ray.ie.batch).
"""
from __future__ import annotations

import json
import sys

from knowlm_ray.config import BatchExtractConfig, ConfigError, parse_job_args
from knowlm_ray.ie.batch import run
from knowlm_ray.runtime import init_ray


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_args(BatchExtractConfig, argv, description=__doc__)
    init_ray()
    try:
        summary = run(cfg)
    except ConfigError as exc:  # bad input path, schema gap, changed settings: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return summary


if __name__ == "__main__":
    main()
