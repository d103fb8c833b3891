"""``output_dir/metrics.jsonl``: one ``{"step", "loss", "lr", "tokens_per_s", ...}`` line per step
(rank 0; also ``samples_per_s``, ``grad_norm``, ``loss_scale`` under fp16, ``mfu`` when the
config names the device peak), plus ``{"step", "val_loss"}`` lines when validation runs.
The same scalars go to TensorBoard event files in ``output_dir/tensorboard/`` (tensorboardX).

On resume the log is first cut back to the checkpoint's step, so steps re-run after a failure
are not duplicated and the file always reads as one clean run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from knowlm_ray.atomic import atomic_write_text


def read_metrics(path: str | Path, strict: bool = False) -> list[dict]:
    """The records of a metrics file ([] if it is missing). Unreadable lines are skipped; with
    ``strict`` only a torn *last* line is (a killed run), any other raises ValueError naming it."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if strict and i < len(lines):
                raise ValueError(f"{p}:{i}: not a JSON record ({exc.msg})") from None
            continue  # a line torn by a killed process
        if not isinstance(rec, dict):
            if strict:
                raise ValueError(f"{p}:{i}: expected a JSON object, got {type(rec).__name__}")
            continue
        out.append(rec)
    return out


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Keep only lines with ``step <= last_step`` (atomic rewrite); returns how many were kept."""
    p = Path(path)
    if not p.exists():
        return 0
    kept = [r for r in read_metrics(p) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in kept))
    return len(kept)


def _tensorboard(directory: Path, purge_step: int):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # optional: metrics.jsonl is the record
        return None
    # purge_step: TensorBoard hides events at or after it from earlier (crashed) writers.
    return SummaryWriter(str(directory), purge_step=purge_step + 1 if purge_step else None, flush_secs=30)


class MetricsLog:
    """Appends one JSON line per step and flushes it, so a crash loses at most the current line."""

    def __init__(self, path: str | Path, resume_step: int, tensorboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = _tensorboard(self.path.parent / "tensorboard", resume_step) if tensorboard else None

    def _write(self, rec: dict) -> dict:
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in rec.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}" if key != "val_loss" else "eval/loss", value, rec["step"])
        return rec

    def log(self, step: int, loss: float, lr: float, tokens_per_s: float, **extra) -> dict:
        return self._write(
            {
                "step": step,
                "loss": round(float(loss), 6),
                "lr": float(lr),
                "tokens_per_s": round(float(tokens_per_s), 1),
                "time": round(time.time(), 3),
                **extra,
            }
        )

    def log_eval(self, step: int, val_loss: float) -> dict:
        return self._write({"step": step, "val_loss": round(float(val_loss), 6)})

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
