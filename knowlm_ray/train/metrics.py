"""``output_dir/metrics.jsonl``: one ``{"step", "loss", "lr", "tokens_per_s"}`` line per step (rank 0).

On resume the log is first cut back to the checkpoint's step, so steps re-run after a failure
are not duplicated and the file always reads as one clean run.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a killed process
    return out


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Keep only lines with ``step <= last_step`` (atomic rewrite); returns how many were kept."""
    p = Path(path)
    if not p.exists():
        return 0
    kept = [r for r in read_metrics(p) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, p)
    return len(kept)


class MetricsLog:
    """Appends one JSON line per step and flushes it, so a crash loses at most the current line."""

    def __init__(self, path: str | Path, resume_step: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, loss: float, lr: float, tokens_per_s: float, **extra) -> dict:
        rec = {"step": step, "loss": round(float(loss), 6), "lr": float(lr),
               "tokens_per_s": round(float(tokens_per_s), 1), "time": round(time.time(), 3), **extra}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        return rec

    def close(self) -> None:
        self._fh.close()
