"""What a training checkpoint holds besides the engine's files: ``train_state.json``.

Layout of one checkpoint (Ray Train merges every rank's upload into one directory):

    train_state.json                 {"step", "tag", "sampler": {"epoch", "offset"}, "engine",
                                      "world_size", "zero_stage", "global_batch"}
    <tag>/...                        engine files (DeepSpeed: zero_pp_rank_*_states.pt, ...;
                                     torch: trainable.safetensors + optimizer.pt)

JSON rather than DeepSpeed's pickled client_state so every engine, and a person, can read it.
Rank 0 writes it after the engine's files, atomically (fsynced). A full disk while a checkpoint
is written is one line (``writing_checkpoint``): the previous checkpoint is intact and the run
resumes from it. ``latest_local_checkpoint`` picks the newest *complete* checkpoint
(``incomplete_reason``: every rank's engine files there, none cut short), as Ray Train resumes
from the last one it registered, never from a folder whose upload stopped part-way.

Resuming on another number of workers: DeepSpeed's ZeRO shards only load on the world size
that wrote them, so the loader converts them first to DeepSpeed's *universal* checkpoint
(``ds_to_universal``: one fp32 tensor + Adam moments per parameter) and loads that with
``checkpoint.load_universal``, which re-partitions weights and optimizer state for the new world
size (exact: nothing is lost). The sampler's state is global (samples consumed of one seeded
stream), so each rank just takes its slice of the new, smaller or larger, global batch.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from knowlm_ray.atomic import DiskFullError, atomic_write_text, disk_full_cause
from knowlm_ray.errors import UserError

STATE_FILE = "train_state.json"
log = logging.getLogger("knowlm_ray.train")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tag: str = ""
    sampler: dict = field(default_factory=lambda: {"epoch": 0, "offset": 0})
    engine: str = ""  # deepspeed | ddp | torch
    world_size: int = 0  # workers that wrote it
    zero_stage: int = 0  # DeepSpeed ZeRO stage (0: not DeepSpeed)
    global_batch: int = 0  # samples per optimizer step of the run that wrote it


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def write_train_state(directory: str | Path, state: TrainState) -> Path:
    return atomic_write_text(Path(directory) / STATE_FILE, json.dumps(asdict(state), indent=1))


# Less free space than this after a failed write: the disk is full (torch.save, which DeepSpeed
# uses, reports a full disk as RuntimeError "file write failed", without the errno).
FULL_BELOW_BYTES = 1 << 20


def _out_of_space(directory: str | Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES


@contextlib.contextmanager
def writing_checkpoint(directory: str | Path, step: int) -> Iterator[None]:
    """Around the writing of one checkpoint into ``directory``: a full disk becomes one line,
    ``DiskFullError`` naming the checkpoint and saying that the previous one is intact (Ray Train
    registers a checkpoint only once it is complete, so a resume starts from the one before)."""
    try:
        yield
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None and not (isinstance(exc, (OSError, RuntimeError)) and _out_of_space(directory)):
            raise
        if isinstance(cause, DiskFullError):
            written = cause.written
        else:  # filename2: the destination of a two-path call (shutil's copy names the source first)
            written = getattr(cause, "filename2", None) or getattr(cause, "filename", None) or ""
        where = f" ({written})" if written else f" (in {directory})"
        raise DiskFullError(
            f"no space left on device writing the step-{step} checkpoint{where}; the previous checkpoint is "
            "intact: free some space (or point storage_path / TMPDIR elsewhere) and run the same command to "
            "resume from it",
            str(written),
        ) from exc


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


def _whole_file(path: Path) -> str | None:
    """None when ``path`` is a complete torch zip archive / safetensors file; else what is wrong.
    A zip's directory sits at its end and a safetensors header states the file's size, so a copy
    or upload that stopped part-way is seen without reading the tensors."""
    if path.suffix == ".pt":
        return None if zipfile.is_zipfile(path) else f"{path.name} is cut short (no zip directory at its end)"
    if path.suffix == ".safetensors":
        from knowlm_ray.models.checkpoint import SafetensorsFile, WeightsError

        try:
            SafetensorsFile(path)
        except WeightsError as exc:
            return str(exc).removeprefix(f"{path}: ")
    return None


def _required_files(tag_dir: Path, state: TrainState) -> list[str]:
    """The engine files every complete checkpoint of ``state`` holds that ``tag_dir`` lacks."""
    have = {p.name for p in tag_dir.iterdir()} if tag_dir.is_dir() else set()
    if state.engine != "deepspeed":  # torch / ddp: rank 0 writes both (engine.TorchEngine.save)
        return [n for n in ("trainable.safetensors", "optimizer.pt") if n not in have]
    # DeepSpeed's names (bf16_ before a ZeRO file in bf16): rank r's optimizer partition
    # (ZeRO >= 1), and every rank's model states (ZeRO-3) or rank 0's alone
    ranks = range(max(state.world_size, 1))
    model = [f"zero_pp_rank_{r}_mp_rank_*_model_states.pt" for r in ranks]
    if state.zero_stage != 3:
        model = ["mp_rank_*_model_states.pt"]
    optim = [f"*zero_pp_rank_{r}_mp_rank_*_optim_states.pt" for r in ranks] if state.zero_stage >= 1 else []
    return [w for w in model + optim if not any(fnmatch.fnmatchcase(n, w) for n in have)]


def incomplete_reason(directory: str | Path) -> str | None:
    """None when ``directory`` is a whole checkpoint; else why not. Whole: ``train_state.json``
    reads, and its ``<tag>/`` holds every file its engine writes on each of its ranks, each of
    them complete. Ray Train uploads each rank's files on its own, so a run stopped during an
    upload leaves a checkpoint folder with some of them (train_state.json possibly among them)."""
    d = Path(directory)
    try:
        state = read_train_state(d)
    except (OSError, ValueError, TypeError) as exc:  # missing, cut short or not ours
        return f"{STATE_FILE} does not read ({type(exc).__name__})"
    tag_dir = d / state.tag
    if not state.tag or not tag_dir.is_dir():
        return f"no {state.tag or 'engine'}/ folder"
    missing = _required_files(tag_dir, state)
    if missing:
        return f"{state.tag}/ lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")
    for f in sorted(tag_dir.iterdir()):
        if f.is_file() and (broken := _whole_file(f)) is not None:
            return f"{state.tag}/{broken}"
    return None


def latest_local_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint dir in a Ray Train run dir (``incomplete_reason``), if any.
    A newer one that is incomplete (its writing or upload stopped) is passed over, in one line."""
    d = Path(run_dir)
    if not d.is_dir():
        return None
    steps = {}
    for p in d.iterdir():
        if p.is_dir() and (p / STATE_FILE).is_file():
            try:
                steps[p] = read_train_state(p).step
            except (OSError, ValueError, TypeError):
                steps[p] = -1  # unreadable: tried last, and reported as incomplete
    for p in sorted(steps, key=lambda p: (steps[p], p.name), reverse=True):
        reason = incomplete_reason(p)
        if reason is None:
            return p
        log.warning("passing over the incomplete checkpoint %s: %s (its writing or upload stopped)", p, reason)
    return None


class IncompatibleCheckpoint(UserError, ValueError):
    pass


def _describe(state: TrainState) -> str:
    stage = f" ZeRO-{state.zero_stage}" if state.engine == "deepspeed" and state.zero_stage else ""
    return f"{state.engine}{stage} on {state.world_size} worker(s) at step {state.step}"


def check_resumable(
    state: TrainState, engine: str, world_size: int, where: str = "", zero_stage: int | None = None
) -> None:
    """Raise unless this run can load ``state``'s checkpoint. DeepSpeed ZeRO shards load into
    DeepSpeed with the same ZeRO stage on any number of ranks (another number through the
    universal conversion, see ``needs_universal``); torch checkpoints (whole trainable weights)
    load anywhere except into DeepSpeed."""
    if state.engine == "deepspeed":
        # zero_stage 0 in the state: written before the stage was recorded (it was the same run's)
        ok = engine == "deepspeed" and (not state.zero_stage or zero_stage is None or state.zero_stage == zero_stage)
        fix = "use the same deepspeed preset / ZeRO stage (any num_workers) to resume"
    else:
        ok = engine != "deepspeed"
        fix = f"use deepspeed: ddp (or num_workers 0) to resume a {state.engine} checkpoint"
    if ok:
        return
    stage = f" ZeRO-{zero_stage}" if engine == "deepspeed" and zero_stage else ""
    raise IncompatibleCheckpoint(
        f"the checkpoint to resume from{' (' + where + ')' if where else ''} was written by {_describe(state)}, "
        f"but this run uses {engine}{stage} on {world_size} worker(s); {fix}, or pick a new run_name to "
        "start over"
    )


def needs_universal(state: TrainState, engine: str, world_size: int) -> bool:
    """A DeepSpeed checkpoint from another world size: load it through the universal format."""
    return state.engine == "deepspeed" and engine == "deepspeed" and state.world_size != world_size


def zero_param_shapes(directory: str | Path, tag: str) -> dict[str, tuple[int, ...]]:
    """Whole shape of every parameter a DeepSpeed checkpoint holds (from rank 0's model states)."""
    import torch

    files = sorted(Path(directory, tag).glob("*_model_states.pt"))
    if not files:
        raise IncompatibleCheckpoint(f"checkpoint {Path(directory, tag)} has no DeepSpeed *_model_states.pt files")
    # DeepSpeed pickles its own objects in there (its loader also uses weights_only=False).
    sd = torch.load(files[0], map_location="cpu", weights_only=False)
    shapes: dict[str, tuple[int, ...]] = {}
    for group in sd.get("param_shapes") or []:
        shapes.update({name: tuple(shape) for name, shape in group.items()})
    return shapes


def check_same_shapes(saved: dict[str, tuple[int, ...]], model: dict[str, tuple[int, ...]], where: str) -> None:
    """The model must have exactly the checkpoint's trainable parameters, shape for shape."""
    missing, unexpected = sorted(set(model) - set(saved)), sorted(set(saved) - set(model))
    differ = [
        f"{n}: checkpoint {list(saved[n])} vs model {list(model[n])}"
        for n in sorted(set(saved) & set(model))
        if saved[n] != model[n]
    ]
    if missing or unexpected or differ:
        raise IncompatibleCheckpoint(
            f"checkpoint {where} cannot be loaded into this model: "
            + "; ".join(
                filter(
                    None,
                    [
                        differ and f"{len(differ)} shape(s) differ ({', '.join(differ[:3])})",
                        missing and f"model parameters not in the checkpoint {missing[:3]}",
                        unexpected and f"checkpoint parameters not in the model {unexpected[:3]}",
                    ],
                )
            )
            + " (a different model or trainable_modules than the run that wrote it)"
        )


def convert_to_universal(directory: str | Path, tag: str, out_dir: str | Path) -> Path:
    """DeepSpeed's ds_to_universal on ``directory/tag`` into ``out_dir/tag`` (+ ``latest_universal``).

    Serial (one process): it runs inside a Ray worker, where a process pool is unwelcome. Its
    progress output goes to a buffer, shown only if it fails. ``inject_missing_state``: ZeRO-1/2
    checkpoints of a plain (non-Megatron) model lack the tensor-parallel info the converter asks
    for; with pure data parallelism its default is the right one."""
    import io
    from argparse import Namespace

    from deepspeed.checkpoint import ds_to_universal

    out = Path(out_dir, tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    args = Namespace(
        input_folder=str(Path(directory, tag)),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            ds_to_universal.main(args)
    except Exception as exc:
        raise RuntimeError(
            f"converting DeepSpeed checkpoint {args.input_folder} to the universal format failed: "
            f"{type(exc).__name__}: {exc}\n{buf.getvalue()[-2000:]}"
        ) from exc
    return out
