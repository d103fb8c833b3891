"""Constrained decoding on the tiny model with random weights: every answer parses and conforms,
within its token budget, in both decode paths, constrained and free rows in one batch."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from knowlm_ray.generation.constraints import ConstraintError, ConstraintSpec, TupleShape
from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.errors import RequestError
from knowlm_ray.generation.params import GenerationParams
from knowlm_ray.ie.answer_schema import answer_schema, constraint_for

TEXTS = [
    "鲁迅，原名周树人，1881年出生于浙江绍兴，是中国现代文学的奠基人。",
    "浙江大学位于杭州市，第3届学生在西湖边读书。",
    "The river Thames flows through London, and report 7 was published in 2023 by Dr. Smith.",
    "马云于1999年在杭州创立了阿里巴巴集团。",
]
NER = ["人物", "地理位置", "组织机构", "时间", "作品", "职业"]
RE = ["出生地", "创始人"]
EE = {"出生": ["人物", "时间", "地点"], "创立": ["创始人", "组织"]}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return GenerationEngine(tiny_model, num_threads=1)


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def _plain(schema):  # our x-span keyword out, for jsonschema
    return json.loads(json.dumps(schema).replace('"x-span": true', '"description": "mention"'))


def _cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        text = TEXTS[k % len(TEXTS)]
        span = rng.random() < 0.5
        kind = ["oneke-json", "alpaca-json", "tuple", "object"][k % 4]
        task = ["ner", "re", "ee"][(k // 4) % 3]
        labels = {"ner": NER, "re": RE, "ee": EE}[task]
        if kind == "object":
            spec = ConstraintSpec("json_object")
        else:
            spec = constraint_for(kind, task, labels, text, "span" if span else "any")
        out.append((text, spec, task, rng))
    return out


def _check(text: str, spec: ConstraintSpec, answer: str) -> None:
    if spec.kind == "tuple":
        assert answer in ("无", "None") or answer.startswith("("), answer
        if spec.span_text:  # every free field of every line is in the text
            for line in answer.split("\n"):
                if line in ("无", "None"):
                    continue
                first = line[1:].split(",")[0]
                assert first in text, (first, answer)
        return
    obj = json.loads(answer)  # parses
    assert isinstance(obj, dict)
    if spec.kind == "json_schema":
        jsonschema.validate(obj, _plain(spec.schema))
        if spec.schema["required"]:  # OneKE: exactly the labels, in order
            assert list(obj) == list(spec.schema["properties"])
        else:
            order = list(spec.schema["properties"])
            assert [k for k in order if k in obj] == list(obj)
    if spec.span_text:
        for s in _strings(obj):
            assert s in text, (s, answer)


def _run(engine, cases, generate, budgets):
    rows, meta = [], []
    for (text, spec, _task, rng), budget in zip(cases, budgets):
        compiled = engine.compile_constraint(spec)
        max_tokens = compiled.min_tokens + budget
        sampling = rng.random() < 0.5
        params = GenerationParams(temperature=1.0 if sampling else 0.0, max_tokens=max_tokens)
        prompt = f"Extract from: {text} ({rng.random():.6f})"
        rows.append(engine.prepare_prompt(prompt, params, constraint=spec))
        meta.append((text, spec, max_tokens))
    results = generate(rows)
    for (text, spec, max_tokens), res in zip(meta, results):
        assert res.num_output_tokens <= max_tokens
        _check(text, spec, res.text)
    return results


def test_200_constrained_answers_through_the_continuous_batcher(engine):
    """200 answers of every kind, greedy and sampled, budgets from the shortest answer up;
    sixteen rows at a time with free rows in the same batch."""
    cases = _cases(200)
    rng = random.Random(1)
    budgets = [rng.choice([0, 0, 1, 2, 3, 5, 8, 20, 60]) for _ in cases]
    batcher = ContinuousBatcher(engine, max_batch_size=16)
    try:
        free = engine.prepare_prompt("free row", GenerationParams(max_tokens=30))
        results = []
        for i in range(0, len(cases), 15):
            futs = [batcher.submit([free])]
            out = _run(engine, cases[i : i + 15], lambda rows: batcher.submit(rows).result(), budgets[i : i + 15])
            results.extend(out)
            assert futs[0].result()[0].num_output_tokens == 30  # the free row runs to its budget
    finally:
        batcher.close()
    assert len(results) == 200
    # the budget closed some answers early: those say "length", the others "stop"
    assert {r.finish_reason for r in results} <= {"stop", "length"}
    assert any(r.finish_reason == "length" for r in results)


def test_constrained_answers_on_the_generate_path(engine):
    """The engine's grouped transformers.generate path (batching: dynamic): the same rules."""
    cases = _cases(24, seed=5)
    budgets = [0, 1, 2, 5, 10, 40] * 4
    _run(engine, cases, engine.generate_prepared, budgets)


def test_free_rows_are_unchanged_beside_constrained_ones(engine):
    free = engine.prepare_prompt("the same free prompt", GenerationParams(max_tokens=20))
    alone = engine.generate_prepared([free])[0].text
    spec = constraint_for("oneke-json", "ner", NER, TEXTS[0])
    mixed = engine.generate_prepared(
        [engine.prepare_prompt("x", GenerationParams(max_tokens=80), constraint=spec), free]
    )
    assert mixed[1].text == alone
    batcher = ContinuousBatcher(engine, max_batch_size=4)
    try:
        row = engine.prepare_prompt("x", GenerationParams(max_tokens=80), constraint=spec)
        assert batcher.submit([row, free]).result()[1].text == alone
    finally:
        batcher.close()


def test_span_mode_never_emits_a_mention_absent_from_the_text(engine):
    batcher = ContinuousBatcher(engine, max_batch_size=16)
    try:
        for task, labels in (("ner", NER), ("re", RE), ("ee", EE)):
            for kind in ("oneke-json", "alpaca-json", "tuple"):
                rows, texts = [], []
                for k in range(8):
                    text = TEXTS[k % len(TEXTS)]
                    spec = constraint_for(kind, task, labels, text, "span")
                    params = GenerationParams(temperature=1.0, max_tokens=120)
                    rows.append(engine.prepare_prompt(f"{k} {text}", params, constraint=spec))
                    texts.append((text, spec))
                for (text, spec), res in zip(texts, batcher.submit(rows).result()):
                    _check(text, spec, res.text)
    finally:
        batcher.close()


def test_a_json_answer_stops_at_its_closing_brace(engine):
    spec = ConstraintSpec("json_schema", {"type": "object", "properties": {}, "additionalProperties": False})
    res = engine.generate_prepared([engine.prepare_prompt("x", GenerationParams(max_tokens=50), constraint=spec)])
    assert res[0].text == "{}" and res[0].finish_reason == "stop" and res[0].num_output_tokens <= 2


def test_refusals(engine):
    spec = constraint_for("oneke-json", "ner", NER, TEXTS[0])
    need = engine.compile_constraint(spec).min_tokens
    with pytest.raises(RequestError, match="shortest answer"):
        engine.prepare_prompt("x", GenerationParams(max_tokens=need - 1), constraint=spec)
    with pytest.raises(RequestError, match="num_beams"):
        engine.prepare_prompt("x", GenerationParams(num_beams=2), constraint=spec)
    bad = ConstraintSpec("json_schema", {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}})
    with pytest.raises(RequestError, match="pattern"):
        engine.prepare_prompt("x", GenerationParams(), constraint=bad)
    with pytest.raises(ConstraintError):
        engine.compile_constraint(ConstraintSpec("json_schema", {"anyOf": [{"type": "string"}, {"enum": ["a"]}]}))


def test_answer_schemas():
    s = answer_schema("oneke-json", "ner", ["人物", "地点"])
    assert list(s["properties"]) == ["人物", "地点"] and s["required"] == ["人物", "地点"]
    assert s["additionalProperties"] is False
    jsonschema.validate({"人物": ["鲁迅"], "地点": []}, s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"人物": []}, s)
    re_ = answer_schema("oneke-json", "re", ["作者"])
    jsonschema.validate({"作者": [{"subject": "a", "object": "b"}]}, re_)
    ee = answer_schema("oneke-json", "ee", {"出生": ["人物", "时间"]})
    jsonschema.validate({"出生": [{"trigger": "生", "arguments": {"人物": "鲁迅", "时间": ["1881", "年"]}}]}, ee)
    eet = answer_schema("oneke-json", "eet", ["出生"])
    jsonschema.validate({"出生": ["生"]}, eet)
    alpaca = answer_schema("alpaca-json", "ner", ["人物", "地点"])
    jsonschema.validate({}, alpaca)
    jsonschema.validate({"地点": ["绍兴"]}, alpaca)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"机构": []}, alpaca)
    spec = constraint_for("tuple", "re", ["作者"], "t", "span")
    assert spec.shape == TupleShape(("span", ("作者",), "span"), ",", "无") and spec.span_text == "t"


def test_the_per_step_shortcuts_agree_with_the_plain_walk(engine):
    """mask_'s memoised masks and advance() adopting settle()'s stack (the per-step cost cuts)
    against a second row of the same constraint that is only ever fed: at every step the allowed
    tokens are exactly llguidance's bitmask, unpacked here, and the shortest closing is the same."""
    import numpy as np
    import torch

    vocab_size = len(engine.tokenizer)
    for text, spec, _task, rng in _cases(24, seed=7):
        compiled = engine.compile_constraint(spec)
        budget = compiled.min_tokens + rng.choice([0, 3, 40])
        fast, plain = compiled.start(budget), compiled.start(budget)
        gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
        for _ in range(budget):
            token = fast.forced()
            if token is None:
                scores = torch.randn(1, vocab_size, generator=gen)
                fast.mask_(scores)
                bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
                plain.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
                allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:vocab_size].astype(bool)
                if spec.span_text is None:  # span mode narrows the grammar's mask further
                    assert np.array_equal(torch.isfinite(scores[0]).numpy(), allowed)
                else:
                    assert not (torch.isfinite(scores[0]).numpy() & ~allowed).any()
                top2 = scores[0].topk(2).indices.tolist()
                token = fast.settle(top2[0])
                roomy = fast.left > compiled.min_tokens + 20 and spec.span_text is None
                if roomy and token == top2[0] and torch.isfinite(scores[0, top2[1]]) and rng.random() < 0.5:
                    token = top2[1]  # settled, then another allowed token taken: advance must feed it
            done = fast.advance(token)
            assert plain.advance(token) == done
            assert fast.closing() == plain.closing()
            if done or token == engine.tokenizer.eos_token_id:
                break
        assert fast.complete or spec.kind == "tuple", (text, spec.kind)  # tuple lines end with EOS
