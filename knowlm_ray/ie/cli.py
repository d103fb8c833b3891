"""`knowlm` subcommands for knowledge extraction (registered by knowlm_ray.cli)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the IE subcommands (ie-score, extract) to the `knowlm` parser."""
