"""The package layers and import rules hold: `lint-imports` (import-linter) with the contracts in
pyproject.toml's [tool.importlinter] — the layer order, generation without Ray / HTTP / serve,
nothing below serve importing it, and no import circles at any depth (lazy imports count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.is_file(), f"{lint} missing: `make setup` installs import-linter (the test extra)"
    run = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
