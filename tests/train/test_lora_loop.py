"""LoRA loop parts in this process (no Ray): prepared instruction shards with a validation split,
val_loss lines, epochs -> max_steps, KnowLM's batch arithmetic, modules_to_save, 8-bit on CPU."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.alpaca import IGNORE_INDEX, build_prompt
from knowlm_ray.config import ConfigError, FinetuneConfig
from knowlm_ray.train import lora
from knowlm_ray.train.loop import WorkerContext, run_worker
from knowlm_ray.train.metrics import read_metrics

PAIRS = [(a, b) for a in ["Ada", "Alan", "Grace", "Linus", "Ken"] for b in ["Paris", "Rome", "Oslo", "Lima"]]


def _write_split(path, rows):
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "input_ids": pa.array([r[0] for r in rows], type=pa.list_(pa.int32())),
            "labels": pa.array([r[1] for r in rows], type=pa.list_(pa.int32())),
        }
    )
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)


@pytest.fixture(scope="module")
def instruction_shards(tiny_model, tmp_path_factory):
    """DIR/train/part-*.arrow + DIR/validation/part-*.arrow + DIR/manifest.json, as the
    instruction preparation job writes them (labels -100 over the prompt)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = []
    for name, city in PAIRS:
        prompt = tok(build_prompt("Where does the person live?", f"{name} lives in {city}."))["input_ids"]
        answer = tok(city, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    root = tmp_path_factory.mktemp("instr")
    _write_split(root / "train" / "part-00000.arrow", rows[:10])
    _write_split(root / "train" / "part-00001.arrow", rows[10:16])
    _write_split(root / "validation" / "part-00000.arrow", rows[16:])
    (root / "manifest.json").write_text(json.dumps({"splits": {"train": 16, "validation": 4}}))
    return root


def test_shards_dir_trains_with_val_loss_and_modules_to_save(tiny_model, instruction_shards, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    cfg = FinetuneConfig(
        model=str(tiny_model),
        data=str(instruction_shards),
        num_workers=0,
        micro_batch_size=4,
        grad_accum=1,
        num_epochs=1,
        eval_every=2,
        lr=1e-2,
        val_set_size=2000,
        lora={
            "r": 4,
            "alpha": 8,
            "target_modules": ["q_proj", "v_proj"],
            "modules_to_save": ["embed_tokens", "lm_head"],
        },
        output_dir=str(tmp_path / "adapter"),
        storage_path=str(tmp_path / "ray"),
    )
    assert lora.prepare_inputs(cfg) is None  # shards: read in the workers
    assert cfg.max_steps == 4  # 1 epoch of the 16 train rows at 4 per step (val_set_size unused: a split exists)
    train, val = lora.load_shard_splits(cfg)
    assert (len(train), len(val)) == (16, 4)
    run_worker(cfg, lora.make_task(cfg), None, WorkerContext())

    lines = read_metrics(tmp_path / "adapter" / "metrics.jsonl")
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and set(evals[0]) == {"step", "val_loss"}
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]

    # modules_to_save: embeddings and lm_head trained and saved whole in the adapter
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    emb = [k for k in saved if "embed_tokens" in k]
    head = [k for k in saved if "lm_head" in k]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert emb and head and saved[emb[0]].shape == base.model.embed_tokens.weight.shape
    assert not torch.equal(saved[emb[0]], base.model.embed_tokens.weight)
    assert not torch.equal(saved[head[0]], base.lm_head.weight)
    tuned = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.equal(tuned.base_model.model.lm_head.modules_to_save["default"].weight, saved[head[0]])


def test_alpaca_split_is_seeded_and_disjoint(tiny_model, tmp_path):
    records = [{"instruction": "Where?", "input": f"{a} lives in {b}.", "output": b} for a, b in PAIRS]
    (tmp_path / "i.json").write_text(json.dumps(records))
    cfg = FinetuneConfig(
        model=str(tiny_model),
        data=str(tmp_path / "i.json"),
        num_workers=2,
        micro_batch_size=2,
        grad_accum=1,
        val_set_size=5,
        num_epochs=3,
    )
    train, val = lora.prepare_inputs(cfg)
    assert (len(train), len(val)) == (15, 5)
    assert cfg.max_steps == 12  # ceil(3 epochs x 15 rows / (2 x 1 x 2 workers))
    t2, v2 = lora.prepare_inputs(FinetuneConfig(**{**cfg.model_dump(), "max_steps": None}))
    assert [v2[i][0].tolist() for i in range(5)] == [val[i][0].tolist() for i in range(5)]
    seen = {tuple(train[i][0].tolist()) for i in range(15)}
    assert not seen & {tuple(val[i][0].tolist()) for i in range(5)}
    with pytest.raises(ConfigError, match="val_set_size 2000 leaves no training rows: the data has 20"):
        lora.prepare_inputs(FinetuneConfig(model=str(tiny_model), data=str(tmp_path / "i.json"), grad_accum=1))


def test_knowlm_batch_arithmetic_and_gpu_only_8bit(tiny_model, tmp_path):
    c = FinetuneConfig(model="m", data="d", num_workers=8)  # KnowLM: 8 GPUs, micro 4, batch 128
    assert (c.grad_accum, c.batch_size, c.num_epochs, c.lr, c.cutoff_len, c.val_set_size) == (
        4,
        128,
        3.0,
        3e-4,
        512,
        2000,
    )
    assert FinetuneConfig(model="m", data="d", num_workers=2).grad_accum == 16
    with pytest.raises(
        ValueError, match=r"batch_size 128 is not a multiple of micro_batch_size 4 x 3 worker\(s\) = 12"
    ):
        FinetuneConfig(model="m", data="d", num_workers=3)
    with pytest.raises(ValueError, match=r"batch_size 100 != micro_batch_size 4 x grad_accum 2 x 2"):
        FinetuneConfig(model="m", data="d", batch_size=100, grad_accum=2)
    with pytest.raises(ConfigError, match="load_in_8bit: .*GPU only"):
        lora.prepare_inputs(FinetuneConfig(model=str(tiny_model), data=str(tmp_path), load_in_8bit=True))
    with pytest.raises(ConfigError, match="ZeRO cannot partition int8"):
        lora.check_8bit(FinetuneConfig(model="m", data="d", load_in_8bit=True, use_gpu=True, deepspeed="zero3"))
    lora.check_8bit(FinetuneConfig(model="m", data="d", load_in_8bit=True, use_gpu=True))  # DDP on GPU: fine
