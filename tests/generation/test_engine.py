"""The generation engine and request schema, without Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from knowlm_ray.generation.engine import GenerationEngine, Prepared
from knowlm_ray.generation.errors import RequestError
from knowlm_ray.generation.params import GenerateRequest, GenerationParams

PROMPTS = [
    ("请从下面的句子中抽取实体。", "浙江大学位于浙江省杭州市。"),
    ("Name the capital of France.", ""),
    ("写一首关于知识图谱的短诗，" * 6, ""),
    ("Extract (head, relation, tail) triples.", "Marie Curie was born in Warsaw and worked in Paris. " * 4),
]


@pytest.fixture(scope="module")
def engine(tiny_model) -> GenerationEngine:
    return GenerationEngine(tiny_model)


def _req(instruction, input="", **params) -> GenerateRequest:
    # GenerationParams (the engine's defaults: greedy), not a /generate body's dict (KnowLM's)
    return GenerateRequest(instruction=instruction, input=input, parameters=GenerationParams(**params))


def test_greedy_batch_equals_one_by_one(engine):
    # Different prompt lengths force left padding; different max_tokens share one greedy call.
    reqs = [_req(i, x, max_tokens=6 + 3 * n) for n, (i, x) in enumerate(PROMPTS)]
    batched = engine.generate_batch(reqs)
    single = [engine.generate_batch([r])[0] for r in reqs]
    assert batched == single
    assert [r.num_output_tokens for r in batched] == [6, 9, 12, 15]  # random weights: no early EOS
    assert all(r.finish_reason == "length" and r.text for r in batched)


def test_one_request_equals_plain_transformers(engine, reference):
    instruction, input = PROMPTS[0]
    res = engine.generate_batch([_req(instruction, input, max_tokens=12)])[0]
    assert (res.text, res.num_output_tokens) == reference(instruction, input, max_tokens=12)


def test_mixed_parameters_are_grouped_and_keep_order(engine, reference):
    reqs = [
        _req("a", max_tokens=5),
        _req("b", max_tokens=5, num_beams=2, repetition_penalty=1.3),
        _req("c", max_tokens=5),
        _req("d", max_tokens=5, num_beams=2, repetition_penalty=1.3),
    ]
    out = engine.generate_batch(reqs)
    assert (out[0].text, out[0].num_output_tokens) == reference("a", max_tokens=5)
    assert (out[1].text, out[1].num_output_tokens) == reference("b", max_tokens=5, num_beams=2, repetition_penalty=1.3)
    assert out[2] == engine.generate_batch([reqs[2]])[0]
    assert out[3] == engine.generate_batch([reqs[3]])[0]


def test_sampling_runs_and_respects_max_tokens(engine):
    import torch

    torch.manual_seed(0)  # unseeded, an EOS drawn early ended ~1 row in 300 before max_tokens
    out = engine.generate_batch([_req("hi", max_tokens=7, temperature=0.8, top_p=0.9, top_k=20)] * 3)
    assert all(r.num_output_tokens == 7 for r in out)


def test_stops_at_eos_and_skips_special_tokens(engine):
    tok = engine.tokenizer
    hello = tok("hello world", add_special_tokens=False)["input_ids"]
    p = Prepared(input_ids=(1, 5), params=GenerationParams(), max_new_tokens=50)
    res = engine._result(hello + [tok.eos_token_id, 7, 8], p)
    assert (res.text, res.num_output_tokens, res.finish_reason) == ("hello world", len(hello) + 1, "stop")


def test_prompt_longer_than_context_is_a_request_error(engine):
    with pytest.raises(RequestError, match="context"):
        engine.prepare(_req("x " * (engine.max_context + 10)))
    with pytest.raises(RequestError, match="max_tokens"):
        engine.prepare(_req("x", max_tokens=engine.max_context + 1))


def test_max_tokens_is_cut_to_the_room_left_in_the_context(engine):
    ids = list(range(3, 3 + engine.max_context - 4))
    assert engine.prepare_ids(ids, GenerationParams(max_tokens=100)).max_new_tokens == 4
    assert engine.prepare_ids(ids[:10], GenerationParams(max_tokens=100)).max_new_tokens == 100


def test_a_batch_never_runs_past_the_context(engine):
    ctx = engine.max_context
    long = Prepared(tuple(range(3, ctx - 2)), GenerationParams(max_tokens=100), 3)
    short = [Prepared((1, 5, 6), GenerationParams(max_tokens=100), 100) for _ in range(2)]
    assert engine._fit_context([0, 1, 2], [short[0], long, short[1]]) == [[0, 2], [1]]
    assert engine._fit_context([0, 1], short) == [[0, 1]]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -2.5},
        {"num_beams": 0},
        {"num_beams": 9},
        {"max_tokens": 0},
        {"repetition_penalty": 0.9},
        {"repetition_penalty": 2.1},
        {"max_tokens": "12"},
        {"max_tokens": 1.5},
        {"temperature": True},
    ],
)
def test_out_of_range_or_wrong_typed_parameters_are_rejected(params):
    with pytest.raises(ValidationError) as err:
        GenerateRequest.model_validate({"instruction": "x", "parameters": params})
    assert err.value.errors()[0]["loc"][:2] == ("parameters", next(iter(params)))


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "instruction"),
        ({"instruction": ""}, "instruction"),
        ({"instruction": "  "}, "instruction"),
        ({"instruction": 3}, "instruction"),
        ({"instruction": "x", "input": None}, "input"),
        ({"instruction": "x", "prompt": "y"}, "prompt"),
    ],
)
def test_bad_request_bodies_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        GenerateRequest.model_validate(body)
    assert err.value.errors()[0]["loc"][0] == field


def test_engine_defaults_are_greedy_and_documented():
    p = GenerationParams()
    assert (p.temperature, p.top_p, p.top_k, p.num_beams, p.max_tokens, p.repetition_penalty) == (
        0.0,
        1.0,
        0,
        1,
        128,
        1.0,
    )
    assert (p.presence_penalty, p.frequency_penalty) == (0.0, 0.0)
    assert not p.sampling and GenerationParams(temperature=0.5).sampling
    assert not GenerationParams(temperature=0.5, do_sample=False).sampling
    assert "max_tokens" in GenerationParams.__doc__


def test_generate_body_takes_knowlms_defaults_and_ignores_unknown_parameters():
    """KnowLM's server (launch_vllm.py): a key absent from ``parameters`` takes vLLM's default
    there (top_p 1.0, top_k -1, max_tokens 16, penalties 0, temperature 1.0: sampling), and a
    key it does not know is ignored."""
    for body in ({"instruction": "x"}, {"instruction": "x", "parameters": {}}):
        p = GenerateRequest.model_validate(body).parameters
        assert (p.temperature, p.top_p, p.top_k, p.max_tokens, p.presence_penalty, p.frequency_penalty) == (
            1.0,
            1.0,
            0,  # -1 = off, read as our 0
            16,
            0.0,
            0.0,
        )
        assert p.sampling and (p.num_beams, p.repetition_penalty) == (1, 1.0)
    knowlm = {
        "instruction": "你好",
        "input": "",
        "parameters": {
            "top_p": 0.7,
            "max_tokens": 16,
            "top_k": -1,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "temperature": 0.9,
        },
    }
    p = GenerateRequest.model_validate(knowlm).parameters
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (0.9, 0.7, 0, 16)
    ours = {"num_beams": 2, "repetition_penalty": 1.3, "do_sample": False, "seed": 1, "use_beam_search": True}
    p = GenerateRequest.model_validate({"instruction": "x", "parameters": ours}).parameters
    assert (p.num_beams, p.repetition_penalty, p.do_sample, p.sampling) == (2, 1.3, False, False)
    # an object from code is taken as it is: the engine's own defaults, not KnowLM's
    assert GenerateRequest(instruction="x", parameters=GenerationParams()).parameters == GenerationParams()
