"""Prepare instruction data: alpaca json/jsonl and / or IE records -> masked token shards + split.

    python jobs/prepare_instructions.py --config jobs/configs/tiny_instructions.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/prepare_instructions.py --config jobs/configs/tiny_instructions.yaml

Writes out_dir/train/part-NNNNN.arrow, out_dir/validation/part-NNNNN.arrow, out_dir/quarantine/
and out_dir/manifest.json (see knowlm_ray/instruct/prepare.py). Same input + config =>
byte-identical output.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job(
        "prepare-instructions", argv, description=__doc__
    )  # knowlm_ray/entry.py: JOBS["prepare-instructions"]


if __name__ == "__main__":
    main()
