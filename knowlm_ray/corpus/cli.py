"""Command group registered on the `knowlm` parser (filled in by its owner)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to `knowlm`."""
