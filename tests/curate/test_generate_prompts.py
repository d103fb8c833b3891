"""The generators' published prompts and their answer parsers."""

from __future__ import annotations

import typing

from knowlm_ray.config import EvolutionName
from knowlm_ray.curate.generate_prompts import (
    BACKTRANSLATION_PROMPT,
    EVOLUTIONS,
    backtranslation_prompt,
    evol_prompt,
    parse_backtranslation,
    parse_evol,
    parse_self_instruct,
    self_instruct_prompt,
)


def test_self_instruct_prompt_numbers_the_seeds_and_opens_the_next():
    p = self_instruct_prompt(["Write a poem\n about   the sea:", "列出三个城市。"])
    assert p == "Come up with a series of tasks:\n1. Write a poem about the sea\n2. 列出三个城市。\n3."


def test_self_instruct_answers_are_split_and_filtered_as_self_instruct_does():
    text = (
        " give me a list of five fruits.\n4. Draw a picture of a cat\n5. Say hi\n"
        "6. Write a program that sorts numbers.\n7. 请用三句话介绍西湖的历史。\n8. ...and then list four more ideas\n9. Tell me about"
    )
    kept, dropped = parse_self_instruct(text, truncated=True)
    assert kept == ["Give me a list of five fruits.", "请用三句话介绍西湖的历史。"]
    assert dropped == {"truncated": 1, "unsuitable": 2, "length": 1, "punctuation": 1}
    assert parse_self_instruct("   ", truncated=False) == ([], {})


def test_evol_prompts_and_their_elimination():
    breadth = evol_prompt("breadth", "List three cities.")
    assert breadth.startswith("I want you act as a Prompt Creator.")
    assert breadth.endswith("#Given Prompt#: \r\n List three cities. \r\n#Created Prompt#:\r\n")
    deepen = evol_prompt("reasoning", "List three cities.")
    assert "using the following method: \nIf #The Given Prompt# can be solved" in deepen
    assert deepen.endswith("#The Given Prompt#: \r\n List three cities. \r\n#Rewritten Prompt#:\r\n")
    assert parse_evol("List three cities in Zhejiang and why.", "List three cities.") == (
        "List three cities in Zhejiang and why.",
        None,
    )
    assert parse_evol("Here is the #Rewritten Prompt#: x", "y") == (None, "leak")
    assert parse_evol(" List three  cities. ", "List three cities.") == (None, "unchanged")
    assert parse_evol("  ", "x") == (None, "empty")


def test_backtranslation_prompt_and_answer():
    assert backtranslation_prompt("Tides rise.") == BACKTRANSLATION_PROMPT + " Tides rise."
    assert BACKTRANSLATION_PROMPT.endswith("process data?\n\nRESPONSE:")
    assert parse_backtranslation("\n\nINSTRUCTION: Why do tides rise?\n\nRESPONSE: more") == (
        "Why do tides rise?",
        None,
    )
    assert parse_backtranslation("Why do tides rise?") == ("Why do tides rise?", None)
    assert parse_backtranslation("INSTRUCTION:  ") == (None, "empty")


def test_the_configs_evolution_names_are_the_prompts():
    """config sits below curate, so it spells the evolution names itself; they stay the same."""
    assert typing.get_args(EvolutionName) == EVOLUTIONS
    for kind in EVOLUTIONS:
        assert evol_prompt(kind, "x")
