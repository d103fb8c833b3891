"""A finished model directory swapped in whole: written to a staging dir beside ``output_dir``,
given the usual file modes, then renamed over it (``knowlm_ray.atomic.publish_dir``), so a reader
never sees half a model. Used by training's export and by the weights tools (``vocab``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from knowlm_ray import atomic

# What a re-published model dir keeps of the one it replaces: the run's metrics (train writes
# them beside the model).
CARRY_OVER = ("metrics.jsonl", "tensorboard")


def staging_dir(output_dir: str | Path) -> Path:
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))


def _readable(directory: Path) -> None:
    """mkdtemp and atomic writers create 0700/0600: give the published model the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def publish_dir(staging: str | Path, output_dir: str | Path, carry: Iterable[str] = CARRY_OVER) -> Path:
    """Swap ``staging`` in as ``output_dir`` (keeping ``carry`` files of the old one)."""
    staging, out = Path(staging), Path(output_dir)
    for name in carry:
        if (staging / name).exists():
            continue
        if (out / name).is_file():
            shutil.copy2(out / name, staging / name)
        elif (out / name).is_dir():
            shutil.copytree(out / name, staging / name)
    _readable(staging)
    return atomic.publish_dir(staging, out)
