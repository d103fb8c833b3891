"""`knowlm plot RUN_DIR [--out PNG] [--size WxH]`: training curves (registered by knowlm_ray.cli).

Imports stay lazy so `knowlm --help` does not load matplotlib.
"""

from __future__ import annotations

import argparse
import re


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels (e.g. 1200x900), got {text!r}")
    return int(m[1]), int(m[2])


def _plot(a: argparse.Namespace) -> None:
    from knowlm_ray.train.plot import plot_run

    out, drawn = plot_run(a.run_dir, a.out, size=a.size)  # a PlotError: knowlm_ray.errors.user_errors
    steps = drawn["loss"][0]
    print(f"{len(steps)} steps ({int(steps[0])}..{int(steps[-1])}) plotted to {out}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to `knowlm`."""
    p = sub.add_parser("plot", help="draw loss, learning-rate and throughput curves of a training run to PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training output_dir (holds metrics.jsonl)")
    p.add_argument("--out", help="PNG file to write (default RUN_DIR/metrics.png)")
    p.add_argument("--size", type=_size, default=(1200, 900), metavar="WxH", help="image size in pixels")
    p.set_defaults(fn=_plot)
