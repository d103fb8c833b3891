"""metrics.jsonl, train_state.json and the atomic, checked export."""

from __future__ import annotations

import json

import pytest
import torch

from knowlm_ray.models.publish import publish_dir
from knowlm_ray.train.checkpoint import TrainState, read_train_state, step_tag, write_train_state
from knowlm_ray.train.export import ExportError, check_full_model, check_nonempty, copy_tokenizer
from knowlm_ray.train.metrics import MetricsLog, read_metrics, truncate_metrics


def test_metrics_log_appends_and_resume_truncates(tmp_path):
    path = tmp_path / "out" / "metrics.jsonl"
    log = MetricsLog(path, resume_step=0)
    for step in range(1, 6):
        log.log(step, loss=5.0 - step, lr=1e-3, tokens_per_s=100.0)
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    assert set(read_metrics(path)[0]) >= {"step", "loss", "lr", "tokens_per_s"}
    MetricsLog(path, resume_step=3).close()  # a resumed run from the step-3 checkpoint
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0


def _tensorboard_scalars(directory) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from TFRecord event files (framing parsed here, events by tensorboardX's proto)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for f in sorted(directory.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])  # after length + its crc
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_metrics_also_go_to_tensorboard_next_to_the_jsonl(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path, resume_step=0)
    for step in (1, 2, 3):
        log.log(step, loss=3.0 / step, lr=1e-3 * step, tokens_per_s=50.0 * step, grad_norm=0.25 * step)
    log.log_eval(3, val_loss=1.5)
    log.close()
    rows = read_metrics(path)
    tb = _tensorboard_scalars(path.parent / "tensorboard")
    assert set(tb) == {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "eval/loss"}
    for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
        assert tb[f"train/{key}"] == pytest.approx({r["step"]: r[key] for r in rows if key in r}, rel=1e-6)
    assert tb["eval/loss"] == {3: 1.5}


def test_train_state_round_trip(tmp_path):
    state = TrainState(step=7, tag=step_tag(7), sampler={"epoch": 1, "offset": 24}, engine="deepspeed", world_size=2)
    write_train_state(tmp_path, state)
    assert read_train_state(tmp_path) == state
    assert json.loads((tmp_path / "train_state.json").read_text())["sampler"]["offset"] == 24
    with pytest.raises(FileNotFoundError, match="train_state.json"):
        read_train_state(tmp_path / "x")


def test_publish_dir_swaps_and_keeps_metrics(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "stale.bin").write_text("old")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "config.json").write_text("{}")
    publish_dir(stage, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    assert not stage.exists()


def test_empty_or_mismatched_tensors_fail_loudly(tmp_path):
    with pytest.raises(ExportError, match="empty"):
        check_nonempty({"a": (8, 4), "lora_B.weight": (0,)}, "adapter")
    sd = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    check_full_model({"w": (2, 3), "b": (3,)}, sd, "ok")
    with pytest.raises(ExportError, match="missing"):
        check_full_model({"w": (2, 3)}, sd, "lost b")
    with pytest.raises(ExportError, match="wrong shape"):
        check_full_model({"w": (2, 3), "b": (4,)}, sd, "bad b")
    with pytest.raises(ExportError, match="no tokenizer files"):
        copy_tokenizer(tmp_path, tmp_path)


def test_resume_refuses_checkpoints_this_setup_cannot_load():
    from knowlm_ray.train.checkpoint import IncompatibleCheckpoint, check_resumable

    ds2 = TrainState(step=100, tag=step_tag(100), engine="deepspeed", world_size=2, zero_stage=3)
    check_resumable(ds2, "deepspeed", 2, zero_stage=3)
    check_resumable(ds2, "deepspeed", 4, zero_stage=3)  # other world size: via the universal format
    with pytest.raises(IncompatibleCheckpoint, match="ZeRO-3 on 2 worker.* at step 100.*deepspeed ZeRO-2 on 4"):
        check_resumable(ds2, "deepspeed", 4, zero_stage=2)
    with pytest.raises(IncompatibleCheckpoint, match="ddp on 2"):
        check_resumable(ds2, "ddp", 2)
    ddp = TrainState(step=5, engine="ddp", world_size=2)
    check_resumable(ddp, "torch", 1)  # whole trainable weights load anywhere but into ZeRO shards
    with pytest.raises(IncompatibleCheckpoint):
        check_resumable(ddp, "deepspeed", 2)
