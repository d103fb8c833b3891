"""One real 2-worker ZeRO-3 pretraining fit on the session's local Ray, then a resumed re-run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from knowlm_ray.config import PretrainConfig
from knowlm_ray.train import pretrain
from knowlm_ray.train.checkpoint import latest_local_checkpoint, read_train_state
from knowlm_ray.train.metrics import read_metrics

pytestmark = pytest.mark.slow
ZERO3_REAL = {"preset": "zero3", "zero_optimization": {"stage3_param_persistence_threshold": 0}}


@pytest.fixture(scope="module")
def settings(tiny_model, tiny_corpus, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pretrain")
    return dict(model=str(tiny_model), data=str(tiny_corpus), num_workers=2, deepspeed=ZERO3_REAL,
                micro_batch_size=4, seq_len=64, lr=3e-3, warmup_steps=1, max_steps=8, save_every=4,
                output_dir=str(root / "out"), storage_path=str(root / "ray"), run_name="pretrain_test")


@pytest.fixture(scope="module")
def first_run(ray_local, settings) -> dict:
    return pretrain.run(PretrainConfig(**settings))


def test_zero3_fit_trains_checkpoints_and_exports(first_run, settings, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(settings["output_dir"])
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in rows)
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert first_run["step"] == 8 and first_run["resumed_from_step"] == 0

    ckpt = latest_local_checkpoint(Path(settings["storage_path"]) / "pretrain_test")
    state = read_train_state(ckpt)
    assert state.step == 8 and state.engine == "deepspeed" and state.world_size == 2
    assert state.sampler == {"epoch": 0, "offset": 8 * 4 * 2}
    assert len(list((ckpt / state.tag).glob("zero_pp_rank_*_optim_states.pt"))) == 2  # both ranks' shards

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(p.numel() > 0 for p in model.parameters())
    assert (out / "tokenizer.model").is_file() and len(AutoTokenizer.from_pretrained(out)) > 300
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    trained = model.state_dict()
    assert not torch.equal(initial["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    assert not torch.equal(initial["model.layers.0.self_attn.q_proj.weight"],
                           trained["model.layers.0.self_attn.q_proj.weight"])


def test_rerun_with_more_steps_resumes_after_the_checkpoint(first_run, settings):
    summary = pretrain.run(PretrainConfig(**{**settings, "max_steps": 10}))
    assert summary["resumed_from_step"] == 8 and summary["step"] == 10
    assert summary["steps_this_run"] == 2
    steps = [r["step"] for r in read_metrics(Path(settings["output_dir"]) / "metrics.jsonl")]
    assert steps == list(range(1, 11))  # continued at 9, nothing duplicated
