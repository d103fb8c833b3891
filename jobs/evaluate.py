"""Evaluate a model: extraction P/R/F1 on a gold IE file and / or perplexity on corpus shards.

    python jobs/evaluate.py --config jobs/configs/tiny_eval.yaml [key.path=value ...]

Writes out_dir/report.json (and out_dir/predictions.jsonl for extraction); see knowlm_ray.ie.evaluate.
"""
from __future__ import annotations

import json
import sys

from knowlm_ray.config import ConfigError, EvaluateConfig, parse_job_args
from knowlm_ray.ie.evaluate import run
from knowlm_ray.runtime import set_default_env


def main(argv: list[str] | None = None) -> dict:
    set_default_env()
    cfg = parse_job_args(EvaluateConfig, argv, description=__doc__)
    try:
        report = run(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # bad path / gold line: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return report


if __name__ == "__main__":
    main()
