"""Pretrain a causal LM on Arrow corpus shards with DeepSpeed ZeRO-3 on Ray Train workers.

    python jobs/pretrain.py --config jobs/configs/tiny.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/tiny.yaml

Re-running the same command resumes from the newest checkpoint in storage_path/run_name (also
what Ray Train does by itself after a lost worker, up to max_failures times). Checkpoints every
save_every steps and every save_every_minutes. Per-step metrics go to output_dir/metrics.jsonl
and output_dir/tensorboard; the final HF model to output_dir.
The 13B recipe on 3 x 8 V100: jobs/configs/zhixi-13b-v100.yaml on cluster/v100.yaml.
"""
from __future__ import annotations

import json
import sys

from knowlm_ray.config import ConfigError, PretrainConfig, parse_job_args
from knowlm_ray.runtime import init_ray
from knowlm_ray.train.pretrain import run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_args(PretrainConfig, argv, description=__doc__)
    init_ray()
    try:
        summary = run(cfg)
    except ConfigError as exc:  # bad path, bad data, bad DeepSpeed config: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
