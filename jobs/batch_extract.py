"""Knowledge-graph extraction over a corpus: Ray Data blocks, an actor pool of models, resumable.

    python jobs/batch_extract.py --config jobs/configs/tiny_extract.yaml [key.path=value ...]
    ray job submit --working-dir . -- python jobs/batch_extract.py --config jobs/configs/tiny_extract.yaml

input: a jsonl file / directory (``text_field``) or corpus Arrow shards (decoded with the model's
tokenizer). Writes out_dir/records.jsonl (IE records), triples.parquet and summary.json; a re-run
skips the blocks already written (see knowlm_ray.ie.batch). A bad input path, a schema gap or
changed settings on a re-run is one line and exit status 2.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("batch-extract", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["batch-extract"]


if __name__ == "__main__":
    main()
