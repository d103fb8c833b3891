"""Relative paths in a job's config when the job runs from ``ray job submit --working-dir``.

Ray runs such a job in a copy of the working dir it uploaded (a temporary directory on the head
node, without git-ignored files such as ``artifacts/``, deleted with the session). A relative
``artifacts/...`` in a preset would name a model that is not there, or an output that is lost.
So:

- ``KNOWLM_ROOT`` set (``ray job submit --working-dir . -- env KNOWLM_ROOT=$PWD python jobs/X.py``):
  the job runs from that directory, as if started there: relative paths, ``--config``'s
  included, mean the same files they mean to the user who typed the command.
- not set, in an uploaded working dir: a relative path that names nothing in the copy (an input
  under ``artifacts/``, every output) is refused with one line saying how to fix it. A path to a
  file the copy holds (``data/sample/...``) is read from the copy.

A leaf module: it imports nothing of the package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT_ENV = "KNOWLM_ROOT"
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
# Keys whose relative value is a path (CorpusConfig keeps its paths relative; the other configs
# make theirs absolute, against the current directory, when they validate).
PATH_KEYS = frozenset(
    {
        "path",
        "tokenizer",
        "out_dir",
        "model",
        "data",
        "input",
        "inputs",
        "gold",
        "shards",
        "schema",
        "ie_records",
        "storage_path",
        "output_dir",
    }
)


class JobPathError(ValueError):
    """A path the job cannot use as given; the message says how to fix it."""


def uploaded_working_dir() -> Path | None:
    """The current directory when this process is a Ray job's entrypoint running in the copy of
    ``--working-dir`` that Ray uploaded; None otherwise."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return Path.cwd() if runtime_env.get("working_dir") else None


def enter_root() -> None:
    """With ``KNOWLM_ROOT`` set, run from that directory (call before the config is read)."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return
    path = Path(root).expanduser()
    if not path.is_dir():
        raise JobPathError(
            f"{ROOT_ENV}={root}: not a directory (it names the directory the config's relative paths are relative to)"
        )
    os.chdir(path)


def _path_values(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _path_values(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, (list, tuple)):
        return [kv for i, v in enumerate(value) for kv in _path_values(v, f"{key}.{i}")]
    return [(key, value)] if isinstance(value, str) and value else []


def check_job_paths(cfg: Any) -> Any:
    """``cfg`` (a pydantic model) unchanged, unless it runs in an uploaded working dir without
    ``KNOWLM_ROOT`` and one of its paths points into that copy at nothing (JobPathError)."""
    here = uploaded_working_dir()
    if here is None or os.environ.get(ROOT_ENV):
        return cfg
    for key, value in _path_values(cfg.model_dump(by_alias=True)):
        if "://" in value or "\n" in value:
            continue
        path = Path(value)
        if path.is_absolute():
            try:
                rel = path.relative_to(here)
            except ValueError:
                continue  # outside the copy: the user's own absolute path
        elif [part for part in key.split(".") if not part.isdigit()][-1] in PATH_KEYS:
            rel = path
        else:
            continue
        if not (here / rel).exists():
            raise JobPathError(
                f"{key}: {rel} is relative, and this job runs in the copy of its working dir that "
                "`ray job submit --working-dir` uploaded (no git-ignored files such as artifacts/; "
                "Ray deletes it): give absolute paths, or name the directory they are relative to: "
                f"ray job submit --working-dir . -- env {ROOT_ENV}=$PWD python jobs/..."
            )
    return cfg
