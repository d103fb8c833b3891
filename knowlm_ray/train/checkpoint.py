"""What a training checkpoint holds besides the engine's files: ``train_state.json``.

Layout of one checkpoint (Ray Train merges every rank's upload into one directory):

    train_state.json                 {"step", "tag", "sampler": {"epoch", "offset"}, "engine", ...}
    <tag>/...                        engine files (DeepSpeed: zero_pp_rank_*_states.pt, ...;
                                     torch: trainable.safetensors + optimizer.pt)

JSON rather than DeepSpeed's pickled client_state so every engine, and a person, can read it.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tag: str = ""
    sampler: dict = field(default_factory=lambda: {"epoch": 0, "offset": 0})
    engine: str = ""
    world_size: int = 0


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def write_train_state(directory: str | Path, state: TrainState) -> Path:
    p = Path(directory) / STATE_FILE
    tmp = p.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    os.replace(tmp, p)
    return p


def read_train_state(directory: str | Path) -> TrainState:
    p = Path(directory) / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE} (not written by knowlm_ray.train?)")
    data = json.loads(p.read_text(encoding="utf-8"))
    return TrainState(**{k: data[k] for k in TrainState.__dataclass_fields__ if k in data})


class LocalCheckpoint:
    """A checkpoint already on local disk, shaped like ``ray.train.Checkpoint`` for the loop core."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def as_directory(self):
        return contextlib.nullcontext(self.path)


def latest_local_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint dir (one holding train_state.json) in a Ray Train run dir, if any."""
    d = Path(run_dir)
    if not d.is_dir():
        return None
    found = [p for p in d.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: read_train_state(p).step, default=None)


class IncompatibleCheckpoint(ValueError):
    pass


def check_resumable(state: TrainState, engine: str, world_size: int, where: str = "") -> None:
    """DeepSpeed ZeRO shards only load into the same engine on the same number of ranks; torch
    checkpoints (whole trainable weights) load anywhere except into DeepSpeed."""
    if state.engine == "deepspeed" and (engine != "deepspeed" or state.world_size != world_size):
        got = f"{engine} on {world_size} worker(s)"
    elif state.engine != "deepspeed" and engine == "deepspeed":
        got = f"deepspeed on {world_size} worker(s)"
    else:
        return
    raise IncompatibleCheckpoint(
        f"the checkpoint to resume from{' (' + where + ')' if where else ''} was written by {state.engine} on "
        f"{state.world_size} worker(s) at step {state.step}, but this run uses {got}; keep the same "
        "deepspeed/num_workers to resume, or pick a new run_name to start over")
