"""/extract with constrained decoding (the default) on the tiny model with random weights: every
answer of 200 requests parses and has its format's shape for its label batch; span mode never
emits a mention absent from the text; ``"constrained": false`` decodes free."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.ie.answer_schema import answer_schema
from knowlm_ray.ie.extract import engine_generate_fn, handle_extract, parse_extract_request, plan_extraction
from knowlm_ray.ie.parsers import parse_answer

SENTENCES = [
    "鲁迅，原名周树人，1881年出生于浙江绍兴。",
    "浙江大学位于杭州市西湖区。",
    "马云于1999年在杭州创立了阿里巴巴。",
    "Marie Curie was born in Warsaw in 1867 and worked in Paris.",
    "Apple was founded by Steve Jobs in Cupertino.",
    "张三在北京大学读书，后来去了上海工作。",
]
SCHEMAS = {
    "ner": [["人物", "地点", "组织机构", "时间", "作品", "职业"], ["person", "location"]],
    "re": [["出生地", "创始人", "所在地", "工作单位"], ["born in"]],
    "ee": [{"出生": ["人物", "时间", "地点"]}, {"创立": ["创始人", "组织"], "读书": ["人物"]}],
}


@pytest.fixture(scope="module")
def generate(tiny_model):
    return engine_generate_fn(GenerationEngine(tiny_model, num_threads=1), {"max_tokens": 96})


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def _conforms(plan, answers, span: bool) -> None:
    for p, answer in zip(plan.prompts, answers):
        kind = p["answer_kind"]
        if kind == "tuple":
            assert answer in ("无", "None") or answer.startswith("("), answer
            assert parse_answer(plan.task, answer, "tuple").status != "unparsed", answer
            continue
        obj = json.loads(answer)  # parses
        schema = json.loads(json.dumps(answer_schema(kind, plan.task, p["labels"])))
        jsonschema.validate(obj, schema)
        if kind == "oneke-json":
            assert list(obj) == list(schema["properties"])  # exactly the batch's labels, in order
        if span:
            for s in _strings(obj):
                assert s in p["input"], (s, answer)


def test_200_extract_requests_all_conform(generate):
    rng = random.Random(0)
    captured = []

    def spy(texts, **kw):
        answers = generate(texts, **kw)
        captured.append(answers)
        return answers

    for k in range(200):
        task = ["ner", "re", "ee"][k % 3]
        text = SENTENCES[rng.randrange(len(SENTENCES))]
        body = {
            "task": task,
            "text": text,
            "schema": SCHEMAS[task][rng.randrange(2)],
            "prompt_format": ["alpaca", "oneke", "zhixi"][(k // 3) % 3],
            "format": "json" if k % 7 else "tuple",
            "mentions": "span" if k % 2 else "any",
            "parameters": {"max_tokens": rng.choice([60, 96]), "temperature": rng.choice([0.0, 1.0])},
        }
        record = handle_extract(body, spy)
        req = parse_extract_request(body)
        plan = plan_extraction(
            req.task, req.text, req.labels, req.lang, fmt=req.format, prompt_format=req.prompt_format
        )
        _conforms(plan, captured[-1], req.mentions == "span")
        assert record["unparsed"] == 0
        if req.mentions == "span":
            for e in record["entities"]:
                assert e["text"] in text and e["start"] is not None


def test_unconstrained_is_free_text(generate):
    body = {"task": "ner", "text": SENTENCES[0], "schema": ["人物"], "constrained": False}
    seen = {}

    def spy(texts, **kw):
        seen.update(kw)
        return generate(texts, **kw)

    handle_extract(body, spy)
    assert "constraints" not in seen
    handle_extract({**body, "constrained": True}, spy)
    assert seen["constraints"] and seen["constraints"][0].kind == "json_schema"


def test_bad_mentions_value_is_named():
    from knowlm_ray.ie.extract import IERequestError

    with pytest.raises(IERequestError, match="mentions"):
        parse_extract_request({"task": "ner", "text": "x", "schema": ["a"], "mentions": "all"})
