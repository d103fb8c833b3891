"""User mistakes are caught on the driver with one clear message, before any Ray worker starts."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.config import ConfigError, FinetuneConfig, PretrainConfig
from knowlm_ray.train import lora, pretrain


def test_pretrain_names_the_bad_path(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="training data not found: .*nowhere"):
        pretrain.check_inputs(PretrainConfig(model=str(tiny_model), data=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="not a Hugging Face model dir"):
        pretrain.check_inputs(PretrainConfig(model=str(tmp_path), data=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"train_batch_size.*9 != 4 \* 1 \* 2"):
        pretrain.check_inputs(
            PretrainConfig(
                model=str(tiny_model), data=str(tmp_path), deepspeed={"preset": "zero3", "train_batch_size": 9}
            )
        )


def test_lora_rejects_data_that_teaches_nothing(tiny_model, tmp_path):
    data = tmp_path / "i.json"
    data.write_text(json.dumps([{"instruction": "Say something long. " * 20, "input": "", "output": "ok"}]))
    with pytest.raises(ConfigError, match="cutoff_len=16"):
        lora.prepare_inputs(FinetuneConfig(model=str(tiny_model), data=str(data), cutoff_len=16))
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        lora.prepare_inputs(FinetuneConfig(model=str(tiny_model), data=str(tmp_path / "bad.jsonl")))
