"""Serving with knowledge edits: the ``edits`` option applies them when a replica loads, and the
server then answers as the merged model does (greedy /generate over real HTTP)."""

from __future__ import annotations

import socket

import pytest
import requests
import torch

INSTRUCTION = "介绍一下浙江大学"


@pytest.fixture(scope="module")
def edited(tiny_model, tmp_path_factory):
    """A rank-4 edit of both MLP output projections (big enough to move greedy answers) and the
    model folder merge-edit makes of it."""
    from transformers import AutoModelForCausalLM

    from knowlm_ray.models.edit_delta import merge_edit, write_edit

    root = tmp_path_factory.mktemp("served_edit")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    g = torch.Generator().manual_seed(7)
    deltas, base = {}, {}
    for i in (0, 1):
        name = f"model.layers.{i}.mlp.down_proj.weight"
        w = model.get_parameter(name)
        deltas[name] = (torch.randn(w.shape[0], 4, generator=g), 0.5 * torch.randn(w.shape[1], 4, generator=g))
        base[name] = w.detach()
    edit = write_edit(
        root / "edit",
        deltas,
        base,
        method="test",
        settings={},
        requests=[{"prompt": INSTRUCTION, "subject": "浙江大学", "target_new": "x"}],
        model_dir=tiny_model,
    )
    return edit, merge_edit(tiny_model, [edit], root / "merged")


def test_options_check_edit_dirs(tmp_path, edited):
    from knowlm_ray.config import ConfigError, load_config
    from knowlm_ray.serve.options import AppArgs

    edit, _ = edited
    args = load_config(AppArgs, base={"model": "m", "edits": [str(edit)]})
    assert args.edits == [str(edit.resolve())]
    with pytest.raises(ConfigError, match="not an edit directory"):
        load_config(AppArgs, base={"model": "m", "edits": [str(tmp_path)]})
    with pytest.raises(ConfigError, match="without quantization"):
        load_config(AppArgs, base={"model": "m", "edits": [str(edit)], "quantization": "int8"})


def test_engine_with_edits_refuses_another_base(edited):
    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.models.edit_delta import EditError

    edit, merged = edited
    with pytest.raises(EditError, match="another base"):  # the merged model already carries it
        GenerationEngine(merged, edits=[edit])


@pytest.mark.slow
def test_served_edit_answers_as_the_merged_model(ray_local, tiny_model, edited, reference, reference_cls):
    from ray import serve

    from knowlm_ray.serve import launch

    edit, merged = edited
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    url = launch.start(str(tiny_model), port=port, num_replicas=1, timeout_s=180, edits=[str(edit)])
    try:
        body = {"instruction": INSTRUCTION, "parameters": {"do_sample": False, "max_tokens": 16}}
        r = requests.post(f"{url}/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        got = r.json()["generated_text"]
    finally:
        launch.stop()
    want, _ = reference_cls(merged)(INSTRUCTION, max_tokens=16)
    plain, _ = reference(INSTRUCTION, max_tokens=16)
    assert want != plain, "the edit does not change the greedy answer: make it larger"
    assert got == want
