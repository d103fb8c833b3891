"""`knowlm plot`: curves of a real (tiny, in-process) training run, torn and resumed logs, errors."""

from __future__ import annotations

import json
import struct

import pytest

from knowlm_ray.cli import main
from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.loop import WorkerContext, run_worker
from knowlm_ray.train.metrics import MetricsLog, read_metrics
from knowlm_ray.train.plot import PlotError, load_curves, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (read by hand: independent of matplotlib)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run_dir(tiny_model, tiny_corpus, tmp_path_factory):
    """output_dir of a real 5-step single-process run (no Ray: the loop's plain core)."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=2,
        grad_accum=1,
        seq_len=32,
        max_steps=5,
        save_every=100,
        warmup_steps=2,
        output_dir=str(out),
        storage_path=str(out.parent / "ray"),
        device_peak_tflops=1.0,
    )
    run_worker(cfg, pretrain.make_task(cfg), None, WorkerContext())
    return out


def test_plot_of_a_real_run_shows_its_metrics(run_dir, tmp_path, capsys):
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    out, drawn = plot_run(run_dir, tmp_path / "curves.png", size=(900, 600))
    assert png_size(out) == (900, 600)
    assert drawn["loss"] == ([1.0, 2.0, 3.0, 4.0, 5.0], [r["loss"] for r in rows])
    assert drawn["lr"][1] == [r["lr"] for r in rows]
    assert drawn["tokens/s"][1] == [r["tokens_per_s"] for r in rows]
    assert drawn["MFU %"][1] == pytest.approx([100 * r["mfu"] for r in rows])
    assert "val loss" not in drawn  # pretraining without validation
    assert not list(tmp_path.glob(".*tmp"))

    main(["plot", str(run_dir)])  # default: RUN_DIR/metrics.png
    assert png_size(run_dir / "metrics.png") == (1200, 900)
    assert "5 steps (1..5)" in capsys.readouterr().out


def test_resumed_torn_log_with_validation(tmp_path):
    run = tmp_path / "run"
    log = MetricsLog(run / "metrics.jsonl", resume_step=0, tensorboard=False)
    for step in range(1, 5):
        log.log(step, loss=4.0 - 0.1 * step, lr=1e-3 * step, tokens_per_s=100.0 + step, samples_per_s=2.0)
        if step % 2 == 0:
            log.log_eval(step, val_loss=4.5 - 0.1 * step)
    log.close()
    # a second writer re-logs steps 3-4 (a resumed run whose log was not cut back), then dies mid-line
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": 3, "loss": 2.5, "lr": 0.5, "tokens_per_s": 7.0}) + "\n")
        fh.write(json.dumps({"step": 4, "val_loss": 2.0}) + "\n")
        fh.write('{"step": 5, "loss": 1.')
    c = load_curves(run)
    assert c.step == [1, 2, 3, 4]
    assert c.loss == pytest.approx([3.9, 3.8, 2.5, 3.6])
    assert c.lr == pytest.approx([1e-3, 2e-3, 0.5, 4e-3])
    assert c.val_step == [2, 4] and c.val_loss == pytest.approx([4.3, 2.0])
    out, drawn = plot_run(run, size=(640, 480))
    assert out == run / "metrics.png" and png_size(out) == (640, 480)
    assert drawn["val loss"] == ([2.0, 4.0], pytest.approx([4.3, 2.0]))
    assert "MFU %" not in drawn


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(PlotError, match="run directory not found"):
        load_curves(tmp_path / "nope")
    with pytest.raises(PlotError, match="no metrics.jsonl"):
        load_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "val_loss": 1.0}) + "\n")
    with pytest.raises(PlotError, match="no training step records"):
        load_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\ngarbage\n{"step": 2, "loss": 0.9}\n')
    with pytest.raises(PlotError, match=r"metrics.jsonl:2: not a JSON record"):
        load_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1, "tokens_per_s": 5}\n')
    with pytest.raises(PlotError, match="too small"):
        plot_run(tmp_path, size=(10, 10))
    assert not (tmp_path / "metrics.png").exists()


def test_cli_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "run directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path), "--size", "big"])
    assert exc.value.code == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err
