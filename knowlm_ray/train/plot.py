"""``knowlm plot RUN_DIR``: training curves from ``RUN_DIR/metrics.jsonl`` drawn into one PNG.

Three panels against the step: training loss (with validation loss where the run logged it),
learning rate, and throughput (tokens/s; MFU on a second axis when the config named a device peak).
A torn last line (a killed run) is skipped; where a step appears more than once (a resumed run whose
log was not cut back) the last record wins, as it is the one the run continued from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from knowlm_ray.atomic import atomic_path
from knowlm_ray.errors import UserError
from knowlm_ray.train.metrics import read_metrics

METRICS_FILE = "metrics.jsonl"
DEFAULT_SIZE = (1200, 900)  # pixels
DPI = 100


class PlotError(UserError, ValueError):
    pass


@dataclass
class Curves:
    """Series read from metrics.jsonl, sorted by step, one value per step (NaN where a key is missing)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    mfu: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def _num(rec: dict, key: str) -> float:
    value = rec.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def load_curves(run_dir: str | Path) -> Curves:
    """Read ``run_dir/metrics.jsonl``; PlotError when it is missing, corrupt or holds no step records."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"run directory not found: {run_dir}")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{run_dir} has no {METRICS_FILE}: is it a training output_dir?")
    try:
        records = read_metrics(path, strict=True)
    except ValueError as exc:
        raise PlotError(str(exc)) from None
    train: dict[int, dict] = {}
    val: dict[int, float] = {}
    for rec in records:  # later records overwrite earlier ones of the same step
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if "loss" in rec:
            train[step] = rec
        elif "val_loss" in rec:
            val[step] = _num(rec, "val_loss")
    if not train:
        raise PlotError(f'{path} holds no training step records (lines with "step" and "loss")')
    c = Curves()
    for step in sorted(train):
        rec = train[step]
        c.step.append(step)
        c.loss.append(_num(rec, "loss"))
        c.lr.append(_num(rec, "lr"))
        c.tokens_per_s.append(_num(rec, "tokens_per_s"))
        c.mfu.append(_num(rec, "mfu"))
    c.val_step = sorted(val)
    c.val_loss = [val[s] for s in c.val_step]
    return c


def _from_zero(ax, values: list[float]) -> None:
    top = max((v for v in values if math.isfinite(v)), default=0.0)
    if top > 0:
        ax.set_ylim(0, top * 1.12)


def render(
    curves: Curves, out: str | Path, size: tuple[int, int] = DEFAULT_SIZE, title: str | None = None
) -> dict[str, tuple[list, list]]:
    """Draw ``curves`` into the PNG ``out`` (written atomically) of ``size`` pixels; returns the
    data of every line as drawn, label -> (x, y), so a caller can check what the picture shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display on training machines
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width, height = size
    if width < 200 or height < 200:
        raise PlotError(f"image size {width}x{height} is too small (at least 200x200 pixels)")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # this figure only; pyplot's global backend is left alone
    ax_loss, ax_lr, ax_tps = fig.subplots(3, 1, sharex=True)
    ax_loss.plot(curves.step, curves.loss, label="loss", color="tab:blue", lw=1.2)
    if curves.val_step:
        ax_loss.plot(curves.val_step, curves.val_loss, label="val loss", color="tab:orange", lw=1.5, marker="o", ms=3)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    ax_lr.plot(curves.step, curves.lr, label="lr", color="tab:green", lw=1.2)
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_tps.plot(curves.step, curves.tokens_per_s, label="tokens/s", color="tab:purple", lw=1.2)
    ax_tps.set_ylabel("tokens/s")
    _from_zero(ax_tps, curves.tokens_per_s)  # a slowdown reads as a fraction, not as noise blown up
    ax_tps.set_xlabel("step")
    ax_tps.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5 on short runs
    axes = [ax_loss, ax_lr, ax_tps]
    if any(not math.isnan(v) for v in curves.mfu):
        ax_mfu = ax_tps.twinx()
        ax_mfu.plot(curves.step, [100 * v for v in curves.mfu], label="MFU %", color="tab:gray", lw=1, ls="--")
        ax_mfu.set_ylabel("MFU (%)")
        _from_zero(ax_mfu, [100 * v for v in curves.mfu])
        axes.append(ax_mfu)
        ax_tps.legend(handles=ax_tps.get_lines() + ax_mfu.get_lines(), loc="lower right")
    for ax in axes[:3]:
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    drawn = {
        line.get_label(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
        for ax in axes
        for line in ax.get_lines()
    }

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return drawn


def plot_run(
    run_dir: str | Path, out: str | Path | None = None, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[Path, dict[str, tuple[list, list]]]:
    """``run_dir/metrics.jsonl`` -> PNG (default ``run_dir/metrics.png``); returns its path and the drawn data."""
    run_dir = Path(run_dir)
    curves = load_curves(run_dir)
    out = Path(out) if out is not None else run_dir / "metrics.png"
    drawn = render(curves, out, size, title=run_dir.resolve().name)
    return out, drawn
