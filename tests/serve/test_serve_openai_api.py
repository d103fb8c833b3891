"""OpenAI-compatible request schemas, chat rendering and model names, without Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from knowlm_ray.alpaca import build_prompt
from knowlm_ray.generation.chat import render_chat
from knowlm_ray.generation.engine import GenerationResult
from knowlm_ray.generation.errors import RequestError, UnknownModelError
from knowlm_ray.serve import openai_api as oai
from knowlm_ray.serve.schemas import ChatCompletionRequest, CompletionRequest


def _chat(*messages):
    return ChatCompletionRequest.model_validate({"messages": [{"role": r, "content": c} for r, c in messages]}).messages


def test_one_user_message_gives_the_generate_prompt():
    assert render_chat(_chat(("user", "介绍一下浙江大学"))) == build_prompt("介绍一下浙江大学")


def test_system_joins_the_instruction_and_history_chains_alpaca_blocks():
    msgs = _chat(("system", "你是知识抽取助手。"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"))
    assert render_chat(msgs) == (build_prompt("你是知识抽取助手。\n\nQ1") + "A1\n\n" + build_prompt("Q2"))
    parts = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    )
    assert render_chat(parts.messages) == build_prompt("ab")


@pytest.mark.parametrize(
    "messages, match",
    [
        ((("user", "q"), ("assistant", "a")), "last message must be from the user"),
        ((("assistant", "a"), ("user", "q")), "before any user message"),
        ((("system", "s"),), "last message must be from the user"),
        ((("user", "  "),), "empty"),
    ],
)
def test_unanswerable_conversations_are_request_errors(messages, match):
    with pytest.raises(RequestError, match=match):
        render_chat(_chat(*messages))


def test_model_names_resolve_to_adapters_only_from_the_configured_set():
    adapters = {"ie", "other"}
    assert oai.resolve_model(None, "tiny", adapters) is None
    assert oai.resolve_model("tiny", "tiny", adapters) is None
    assert oai.resolve_model("ie", "tiny", adapters) == "ie"
    assert oai.resolve_model("tiny:other", "tiny", adapters) == "other"
    for bad in ("nope", "tiny:nope", "/etc/passwd", "../ie", "x:ie"):
        with pytest.raises(UnknownModelError, match="available: tiny, ie, other"):
            oai.resolve_model(bad, "tiny", adapters)


def test_models_list_has_base_then_adapters():
    body = oai.models_list("tiny", ["other", "ie"], 5)
    assert [m["id"] for m in body["data"]] == ["tiny", "ie", "other"]
    assert body["data"][1]["parent"] == "tiny" and body["object"] == "list"


def test_usage_counts_prompts_once_and_every_choice():
    r = [
        GenerationResult("a", 3, 10, "stop"),
        GenerationResult("b", 4, 10, "length"),
        GenerationResult("c", 5, 7, "length"),
        GenerationResult("d", 1, 7, "stop"),
    ]
    assert oai.usage(r, n=2) == {"prompt_tokens": 17, "completion_tokens": 13, "total_tokens": 30}
    body = oai.completion_body("cmpl-1", 0, "tiny", r, 2)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert oai.sse({"a": "浙"}) == 'data: {"a": "浙"}\n\n' and oai.SSE_DONE == "data: [DONE]\n\n"


def test_openai_defaults():
    c = CompletionRequest(prompt="x")
    assert (c.max_tokens, c.temperature, c.n, c.stream, c.stop_list) == (16, 1.0, 1, False, ())
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    assert chat.max_new_tokens == 128 and chat.generation_params(128).sampling
    both = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 7}
    )
    assert both.max_new_tokens == 7
    assert CompletionRequest(prompt="x", stop="###").stop_list == ("###",)


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "functions": []}, "functions"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty"),
    ],
)
def test_bad_completion_bodies_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate(body)
    assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    "body, mentions",
    [
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "seed": 3}, "seed"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream"),
    ],
)
def test_fields_that_cannot_be_honoured_are_named(body, mentions):
    assert mentions in CompletionRequest.model_validate(body).unsupported()
    assert CompletionRequest.model_validate({"prompt": "x", "seed": 3, "temperature": 0}).unsupported() is None


def test_openai_penalties_and_top_k_off_reach_the_decoder():
    req = CompletionRequest.model_validate(
        {"prompt": "x", "presence_penalty": 0.5, "frequency_penalty": -1, "top_k": -1, "temperature": 0}
    )
    assert req.unsupported() is None
    p = req.generation_params(16)
    assert (p.presence_penalty, p.frequency_penalty, p.top_k) == (0.5, -1.0, 0)
    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 1.5}
    )
    assert chat.unsupported() is None and chat.generation_params(8).frequency_penalty == 1.5


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ],
)
def test_bad_chat_bodies_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate(body)
    assert err.value.errors()[0]["loc"][0] == field
