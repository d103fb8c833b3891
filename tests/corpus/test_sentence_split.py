"""Sentence splitting rules (plain Python, no Ray)."""
from __future__ import annotations

import pytest

from knowlm_ray.corpus.split import split_sentences


def test_zh_stops_and_closing_quotes():
    text = "浙江大学位于杭州。“你好。”他说。真的吗？！是的；好\n下一行"
    assert split_sentences(text, "zh") == ["浙江大学位于杭州。", "“你好。”", "他说。", "真的吗？！",
                                           "是的；", "好\n", "下一行"]


def test_zh_brackets_ascii_stops_and_whitespace_stay_with_sentence():
    text = "他说：「走吧！」然后离开了. 价格是3.5元! 对吧?\n\n  结束"
    assert split_sentences(text, "zh") == ["他说：「走吧！」", "然后离开了. 价格是3.5元! ", "对吧?\n\n  ", "结束"]


def test_en_abbreviations_decimals_and_initials():
    text = ("Mr. Smith met Dr. Watson in the U.S. They paid $3.50 each, e.g. for tea. "
            "J. K. Rowling wrote it. \"Really?\" she asked. It is 3.14 miles etc. Nothing else.")
    assert split_sentences(text, "en") == [
        "Mr. Smith met Dr. Watson in the U.S. They paid $3.50 each, e.g. for tea. ",
        "J. K. Rowling wrote it. ",
        "\"Really?\" she asked. ",
        "It is 3.14 miles etc. Nothing else.",
    ]


def test_en_needs_capital_or_quote_after_stop_and_splits_lines():
    text = "See section 2. it continues. Next one!\nNew paragraph? \u201cQuoted.\u201d Done."
    assert split_sentences(text, "en") == ["See section 2. it continues. ", "Next one!\n",
                                           "New paragraph? ", "\u201cQuoted.\u201d ", "Done."]


def test_code_splits_at_lines():
    text = "def f(x):\n    return x. Upper\n\nprint(f(1))"
    assert split_sentences(text, "code") == ["def f(x):\n", "    return x. Upper\n", "\n", "print(f(1))"]


@pytest.mark.parametrize("lang", ["zh", "en", "code"])
@pytest.mark.parametrize("text", ["", "一。二！三？", "A. B. C.", "no stop at all", "\n\n", "x\n"])
def test_split_is_a_partition(text, lang):
    parts = split_sentences(text, lang)
    assert "".join(parts) == text
    assert all(parts)
