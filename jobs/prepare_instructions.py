"""Prepare instruction data: alpaca json/jsonl and / or IE records -> masked token shards + split.

    python jobs/prepare_instructions.py --config jobs/configs/tiny_instructions.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/prepare_instructions.py --config jobs/configs/tiny_instructions.yaml

Writes out_dir/train/part-NNNNN.arrow, out_dir/validation/part-NNNNN.arrow, out_dir/quarantine/
and out_dir/manifest.json (see knowlm_ray/instruct/prepare.py). Same input + config =>
byte-identical output.
"""
from __future__ import annotations

import sys

from knowlm_ray.config import ConfigError, InstructionsConfig, parse_job_args
from knowlm_ray.instruct.prepare import run
from knowlm_ray.runtime import init_ray


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_args(InstructionsConfig, argv, description=__doc__)
    init_ray()
    try:
        manifest = run(cfg)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:  # user-caused: one line
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    s, d = manifest["splits"], manifest["dropped"]
    print(f"prepare_instructions: {manifest['read']} read, {d['malformed']} malformed, "
          f"{d['empty_response']} empty responses, {d['cut_off']} cut off -> train {s['train']['rows']} rows "
          f"({s['train']['tokens']} tokens, {s['train']['label_tokens']} learned), validation "
          f"{s['validation']['rows']} rows in {len(manifest['shards'])} shards at {cfg.out_dir}")
    return manifest


if __name__ == "__main__":
    main()
