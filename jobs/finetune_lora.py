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

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("finetune-lora", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["finetune-lora"]


if __name__ == "__main__":
    main()
