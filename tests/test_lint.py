"""Lint and format hold: `ruff check` and `ruff format --check` with pyproject.toml's [tool.ruff]."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args):
    ruff = Path(sys.executable).with_name("ruff")
    assert ruff.is_file(), f"{ruff} missing: `make setup` installs ruff (the test extra)"
    run = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (
        f"ruff {' '.join(args)} (fix: .venv/bin/ruff {' '.join(a for a in args if a != '--check')}):\n"
        + run.stdout[-4000:]
        + run.stderr[-2000:]
    )
