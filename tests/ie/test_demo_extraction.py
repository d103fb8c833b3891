"""The demo's extraction stage in small: /extract-prompt NER instructions (``kg2instruct
--serve-prompt``) -> a real 2-worker LoRA fit with jobs/configs/tiny_lora.yaml -> streamed merge ->
the extraction path /extract runs -> every gold entity of the trained texts comes back."""

from __future__ import annotations

import pytest

from knowlm_ray import config as C
from knowlm_ray.demo import CONFIGS, demo_ie_records, entity_recall, write_demo_instructions
from knowlm_ray.ie.extract import engine_generate_fn, extract_record

pytestmark = pytest.mark.slow


def test_lora_on_serve_prompt_instructions_recovers_the_gold_entities(ray_local, tiny_model, tmp_path):
    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.models.lora import merge_lora
    from knowlm_ray.train.lora import run as finetune

    records, schema = demo_ie_records(4)
    assert write_demo_instructions(tmp_path / "ner.json", records, schema) == 4  # one prompt per short text
    cfg = C.load_config(
        C.FinetuneConfig,
        CONFIGS / "tiny_lora.yaml",
        [
            f"model={tiny_model}",
            f"data={tmp_path / 'ner.json'}",
            f"output_dir={tmp_path / 'lora'}",
            f"storage_path={tmp_path / 'ray'}",
            "max_steps=150",
            "save_every=150",
        ],
    )
    finetune(cfg)
    merge_lora(str(tiny_model), str(tmp_path / "lora"), str(tmp_path / "merged"))

    generate = engine_generate_fn(GenerationEngine(tmp_path / "merged"))
    for rec in records:
        got = extract_record(generate, "ner", rec["text"], schema["ner"], "zh")
        found, gold, extra = entity_recall(rec, got)
        assert (found, extra) == (gold, 0), (rec["entities"], got["raw"])
        assert all(rec["text"][e["start"] : e["end"]] == e["text"] for e in got["entities"])
