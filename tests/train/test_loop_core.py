"""The loop's plain-Python core, in this process without Ray: train, checkpoint, exact resume, no-op re-run."""

from __future__ import annotations

import shutil

import pytest

from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import LocalCheckpoint, read_train_state
from knowlm_ray.train.loop import WorkerContext, run_worker
from knowlm_ray.train.metrics import read_metrics


def _run(cfg, keep, checkpoint=None):
    saved = {}

    def report(metrics, directory):
        if directory:
            saved[metrics["step"]] = shutil.copytree(directory, keep / f"ckpt{metrics['step']}")

    ctx = WorkerContext(checkpoint=LocalCheckpoint(checkpoint) if checkpoint else None, report=report)
    return run_worker(cfg, pretrain.make_task(cfg), None, ctx), saved


def test_local_loop_resumes_exactly_and_rerun_is_noop(tiny_model, tiny_corpus, tmp_path):
    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=2,
        grad_accum=2,
        seq_len=32,
        max_steps=6,
        save_every=2,
        warmup_steps=1,
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
    )
    summary, saved = _run(cfg, tmp_path)
    straight = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in straight] == [1, 2, 3, 4, 5, 6]
    assert sorted(saved) == [2, 4, 6] and summary["engine"] == "torch"
    state = read_train_state(saved[4])
    assert state.step == 4 and state.sampler == {"epoch": 0, "offset": 4 * 2 * 2}

    # Resume from step 4 (as after a crash): steps 5-6 again, identical losses, no duplicate lines.
    summary, _ = _run(cfg, tmp_path / "again", checkpoint=saved[4])
    assert summary["start_step"] == 4
    resumed = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed[4:]] == pytest.approx([r["loss"] for r in straight[4:]], abs=1e-5)

    # max_steps reached: a re-run trains nothing and re-exports the same model.
    summary, again = _run(cfg, tmp_path / "noop", checkpoint=saved[6])
    assert summary["start_step"] == 6 and summary["step"] == 6 and not again
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 6
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_time_based_save_and_gradient_checkpointing(tiny_model, tiny_corpus, tmp_path):
    """save_every_minutes saves on rank 0's clock even between save_every steps; gradient
    checkpointing (recompute in backward) trains the same losses on CPU."""
    ticks = iter(range(0, 10_000, 25))  # a fake clock: every call is 25 s later

    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=2,
        seq_len=32,
        max_steps=6,
        save_every=100,
        save_every_minutes=1,
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
    )
    saved = {}
    ctx = WorkerContext(report=lambda metrics, d: d and saved.setdefault(metrics["step"], read_train_state(d)))
    run_worker(cfg, pretrain.make_task(cfg), None, ctx, clock=lambda: next(ticks))
    # t=0 start; steps 1-2 at 25, 50 s; step 3 at 75 s >= 60 -> save (clock 100); step 6 at 175 s and last
    assert sorted(saved) == [3, 6] and saved[3].sampler == {"epoch": 0, "offset": 6}
    plain = [r["loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl")]

    gc_cfg = cfg.model_copy(
        update={
            "gradient_checkpointing": True,
            "save_every_minutes": 0,
            "output_dir": str(tmp_path / "gc"),
            "device_peak_tflops": 1e-6,
        }
    )
    task = pretrain.make_task(gc_cfg)
    calls = []

    def build():
        model = pretrain.load_causal_lm(gc_cfg.model, True)
        for layer in model.model.layers:  # count the layers that really run under torch's checkpoint
            inner = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
        return model

    task.build_model = build
    run_worker(gc_cfg, task, None, WorkerContext())
    assert len(calls) == 6 * 2  # every step, both layers (the loop trains in train mode)
    assert [r["loss"] for r in read_metrics(tmp_path / "gc" / "metrics.jsonl")] == pytest.approx(plain, abs=1e-5)
    rows = read_metrics(tmp_path / "gc" / "metrics.jsonl")
    assert all("grad_norm" in r and "samples_per_s" in r for r in rows)
    # MFU = model FLOPs per token (6 N + 12 L H T) x tokens/s / peak (here a fake 1 MFLOP/s device)
    from transformers import AutoModelForCausalLM

    from knowlm_ray.train.loop import model_flops_per_token

    fpt = model_flops_per_token(AutoModelForCausalLM.from_pretrained(tiny_model), 32)
    assert fpt > 6 * 200_000
    assert rows[-1]["mfu"] == pytest.approx(fpt * rows[-1]["tokens_per_s"] / 1e6, rel=1e-3)


def test_stage1_trains_only_embeddings_and_lm_head(tiny_model, tiny_corpus, tmp_path):
    """Chinese-LLaMA-Alpaca's stage 1 after a vocabulary expansion: the transformer stays frozen."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = PretrainConfig(
        model=str(tiny_model),
        data=str(tiny_corpus),
        num_workers=0,
        deepspeed="ddp",
        micro_batch_size=2,
        seq_len=32,
        max_steps=2,
        trainable_modules=["embed_tokens", "lm_head"],
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "ray"),
    )
    run_worker(cfg, pretrain.make_task(cfg), None, WorkerContext())
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}
    with pytest.raises(ValueError, match=r"no parameters under \['embed'\]"):
        pretrain.freeze_except(AutoModelForCausalLM.from_pretrained(tiny_model), ["embed"])
