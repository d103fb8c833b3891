"""Key statistics for knowledge editing: C = E[k k^T] of MLP output projections' inputs over a corpus.

    python jobs/edit_stats.py --config jobs/configs/tiny_edit_stats.yaml [key.path=value ...]
    ray job submit --working-dir . -- env KNOWLM_ROOT=$PWD python jobs/edit_stats.py --config jobs/configs/tiny_edit_stats.yaml

ROME's and MEMIT's mom2 statistics, for every module of ``layers`` in one pass over the first
``n_samples`` rows of corpus shards: a Ray Data actor pool of models, partial sums written per
block as they finish (a killed run resumes where it stopped), the result cached by (model
checksum, module, samples) in ``cache_dir``, where ``knowlm edit apply`` finds it (see
knowlm_ray.edit.stats). A layer the model lacks or a missing path is one line and exit status 2.
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("edit-stats", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS["edit-stats"]


if __name__ == "__main__":
    main()
