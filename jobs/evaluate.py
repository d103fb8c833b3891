"""Evaluate a model: extraction P/R/F1 on a gold IE file and / or perplexity on corpus shards.

    python jobs/evaluate.py --config jobs/configs/tiny_eval.yaml [key.path=value ...]

Writes out_dir/report.json (and out_dir/predictions.jsonl for extraction); see knowlm_ray.ie.evaluate.
A bad model, gold, schema or shards path is one line naming the key and exit status 2.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("evaluate", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["evaluate"]


if __name__ == "__main__":
    main()
