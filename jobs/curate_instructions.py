"""Curate instruction data: a chain of selectors (EasyInstruct's) over alpaca / IEPile / ShareGPT jsonl.

    python jobs/curate_instructions.py --config jobs/configs/tiny_curate.yaml [key.path=value ...]
    ray job submit --working-dir . -- env KNOWLM_ROOT=$PWD python jobs/curate_instructions.py --config jobs/configs/tiny_curate.yaml

Writes out_dir/kept.jsonl (the kept records, as read; masked where pii masks), out_dir/dropped.jsonl
(each dropped record with the selector and the value that dropped it), out_dir/quarantine/ and
out_dir/manifest.json (counts: read, malformed, dropped per selector, kept); see
knowlm_ray/curate/pipeline.py. Same input + config => byte-identical output.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("curate-instructions", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["curate-instructions"]


if __name__ == "__main__":
    main()
