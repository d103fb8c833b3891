"""LoRA instruction tuning (KnowLM's alpaca-lora recipe) on Ray Train workers (DDP or ZeRO-3).

    python jobs/finetune_lora.py --config jobs/configs/tiny_lora.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/finetune_lora.py --config jobs/configs/tiny_lora.yaml

data: an alpaca json/jsonl file (or a dir of them), or a dir of prepared instruction shards
(DIR/train/part-*.arrow, DIR/validation/part-*.arrow, DIR/manifest.json). val_set_size rows are
held out (seeded) unless a validation split exists; val_loss every eval_every steps goes to
output_dir/metrics.jsonl. num_epochs sets max_steps unless max_steps is given. Re-running the
same command resumes. The peft adapter (+ tokenizer) goes to output_dir; merge it with
`knowlm weights merge-lora`.
"""
from __future__ import annotations

import json
import sys

from knowlm_ray.config import ConfigError, FinetuneConfig, parse_job_args
from knowlm_ray.runtime import init_ray
from knowlm_ray.train.lora import run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_args(FinetuneConfig, argv, description=__doc__)
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
