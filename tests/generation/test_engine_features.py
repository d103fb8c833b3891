"""Engine features without Ray: stop strings, streaming hooks, cancellation, LoRA adapters
(per-request, LRU), precision and device options."""

from __future__ import annotations

import pytest

from knowlm_ray.generation.engine import (
    EngineConfigError,
    GenerationEngine,
    check_engine_options,
    find_stop,
    safe_text_end,
)
from knowlm_ray.generation.errors import UnknownModelError
from knowlm_ray.generation.params import GenerationParams

GREEDY = GenerationParams(max_tokens=24)


@pytest.fixture(scope="module")
def engine(tiny_model, lora_dirs) -> GenerationEngine:
    return GenerationEngine(tiny_model, loras=lora_dirs, max_loras=1)


class Hooks:
    def __init__(self, stream=(), cancel_after=None):
        self.stream, self.cancel_after = set(stream), cancel_after or {}
        self.deltas: dict[int, list[str]] = {}
        self.calls: dict[int, int] = {}

    def wants_text(self, i):
        return i in self.stream

    def on_text(self, i, delta):
        self.deltas.setdefault(i, []).append(delta)

    def cancelled(self, i):
        self.calls[i] = self.calls.get(i, 0) + 1
        return i in self.cancel_after and self.calls[i] > self.cancel_after[i]


def test_stop_helpers():
    assert find_stop("abc###def", ["#", "de"]) == 3 and find_stop("abc", ["x"]) is None
    assert safe_text_end("hello ##", ["###"]) == len("hello ")  # could still become "###"
    assert safe_text_end("hello #x", ["###"]) == len("hello #x")
    assert safe_text_end("abc\ufffd", []) == 3  # half a character: wait for the rest


def test_streamed_deltas_equal_the_result_and_rows_stay_exact(engine):
    rows = [engine.prepare_prompt(p, GREEDY) for p in ("浙江大学位于", "The capital of France is")]
    hooks = Hooks(stream={0, 1})
    streamed = engine.generate_prepared(rows, hooks)
    plain = engine.generate_prepared(rows)
    assert streamed == plain
    for i, res in enumerate(plain):
        assert "".join(hooks.deltas[i]) == res.text and len(hooks.deltas[i]) > 1  # token by token


def test_stop_string_cuts_text_and_stream_never_shows_it(engine):
    full = engine.generate_prepared([engine.prepare_prompt("浙江大学位于", GREEDY)])[0]
    stop = full.text[4:6]
    assert stop and full.text.find(stop) >= 4
    row = engine.prepare_prompt("浙江大学位于", GREEDY, stop=[stop, "never-there"])
    hooks = Hooks(stream={0})
    (res,) = engine.generate_prepared([row], hooks)
    assert res.text == full.text[: full.text.find(stop)] and res.finish_reason == "stop"
    assert res.num_output_tokens < full.num_output_tokens  # generation itself stopped early
    assert "".join(hooks.deltas[0]) == res.text


def test_a_cancelled_row_stops_and_the_others_are_unchanged(engine):
    prompts = ("The capital of France is", "浙江大学")
    rows = [engine.prepare_prompt(p, GenerationParams(max_tokens=40)) for p in prompts]
    hooks = Hooks(cancel_after={0: 5})
    out = engine.generate_prepared(rows, hooks)
    assert out[0].finish_reason == "cancelled" and out[0].num_output_tokens < 40
    assert out[1] == engine.generate_prepared([rows[1]])[0]


def test_adapter_output_equals_peft_and_base_is_unchanged(engine, tiny_model, lora_dirs, reference, reference_cls):
    from knowlm_ray.alpaca import build_prompt

    prompt = build_prompt("请抽取实体。", "浙江大学位于杭州。")
    base_before = engine.generate_prepared([engine.prepare_prompt(prompt, GREEDY)])[0]
    # one batch holding base and both adapters: grouped per adapter, each with its own weights
    rows = [engine.prepare_prompt(prompt, GREEDY, adapter=a) for a in ("ie", None, "other", "ie")]
    out = engine.generate_prepared(rows)
    for name in ("ie", "other"):
        want = reference_cls(tiny_model, lora_dirs[name]).raw(prompt, max_tokens=24)
        got = out[[r.adapter for r in rows].index(name)]
        assert (got.text, got.num_output_tokens) == want
    assert out[0] == out[3]
    assert out[1] == base_before and (out[1].text, out[1].num_output_tokens) == reference.raw(prompt, 24)
    assert out[0].text != out[1].text != out[2].text
    # max_loras=1: one load per adapter group, the older one evicted (LRU); asking again reloads
    assert engine.loaded_adapters == ["other"] and engine.adapter_loads == 2
    again = engine.generate_prepared([rows[0]])[0]
    assert again == out[0] and engine.loaded_adapters == ["ie"] and engine.adapter_loads == 3


def test_unknown_adapter_is_refused_before_any_disk_access(engine):
    with pytest.raises(UnknownModelError, match="not configured"):
        engine.prepare_prompt("x", GREEDY, adapter="../../etc")
    with pytest.raises(UnknownModelError):
        engine._load_adapter("/tmp")


def test_adapter_dir_must_be_a_peft_dir(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        GenerationEngine(tiny_model, loras={"x": tmp_path})


def test_cpu_int8_is_torch_dynamic_quantisation(tiny_model, reference):
    import torch

    eng = GenerationEngine(tiny_model, quantization="int8")
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in eng.model.modules())
    res = eng.generate_prepared([eng.prepare_prompt("浙江大学位于", GenerationParams(max_tokens=8))])[0]
    assert res.num_output_tokens == 8 and res.text


def test_device_map_and_max_memory_reach_the_loader_on_cpu(tiny_model):
    eng = GenerationEngine(tiny_model, device_map="auto", max_memory={"cpu": "2GiB"})
    assert str(eng.device) == "cpu"
    assert eng.generate_prepared([eng.prepare_prompt("hi", GenerationParams(max_tokens=3))])[0].num_output_tokens == 3


def test_bfloat16_on_cpu_runs(tiny_model):
    eng = GenerationEngine(tiny_model, dtype="bfloat16")
    assert "bfloat16" in eng.describe()["dtype"]
    assert eng.generate_prepared([eng.prepare_prompt("hi", GenerationParams(max_tokens=3))])[0].num_output_tokens == 3


@pytest.mark.parametrize(
    "args, match",
    [
        (("cpu", "float16", "none"), "float16 needs a GPU"),
        (("cpu", "bfloat16", "int8"), "set dtype float32"),
        (("cpu", "float64", "none"), "dtype must be one of"),
        (("cpu", "float32", "int4"), "quantization must be one of"),
        (("cuda", "float16", "int8"), "bitsandbytes"),  # not installed here: the `quant` extra
    ],
)
def test_precision_options_fail_clearly(args, match):
    with pytest.raises(EngineConfigError, match=match):
        check_engine_options(*args)


def test_cpu_int8_with_adapters_is_refused():
    with pytest.raises(EngineConfigError, match="LoRA"):
        check_engine_options("cpu", "float32", "int8", has_loras=True)


def test_cuda_without_a_gpu_is_a_clear_error(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineConfigError, match="CUDA is not available"):
        GenerationEngine(tiny_model, device="cuda")
