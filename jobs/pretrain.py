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

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("pretrain", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["pretrain"]


if __name__ == "__main__":
    main()
