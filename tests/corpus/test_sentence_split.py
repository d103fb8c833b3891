"""Sentence splitting rules (plain Python, no Ray)."""

from __future__ import annotations

import pytest

from knowlm_ray.corpus.split import split_sentences


def test_zh_stops_and_closing_quotes():
    text = "浙江大学位于杭州。“你好。”他说。真的吗？！是的；好\n下一行"
    assert split_sentences(text, "zh") == [
        "浙江大学位于杭州。",
        "“你好。”",
        "他说。",
        "真的吗？！",
        "是的；",
        "好\n",
        "下一行",
    ]


def test_zh_brackets_ascii_stops_and_whitespace_stay_with_sentence():
    text = "他说：「走吧！」然后离开了. 价格是3.5元! 对吧?\n\n  结束"
    assert split_sentences(text, "zh") == ["他说：「走吧！」", "然后离开了. 价格是3.5元! ", "对吧?\n\n  ", "结束"]


def test_en_abbreviations_decimals_and_initials():
    text = (
        "Mr. Smith met Dr. Watson in the U.S. They paid $3.50 each, e.g. for tea. "
        'J. K. Rowling wrote it. "Really?" she asked. It is 3.14 miles etc. Nothing else.'
    )
    assert split_sentences(text, "en") == [
        "Mr. Smith met Dr. Watson in the U.S. ",  # "U.S." then a sentence opener: a boundary
        "They paid $3.50 each, e.g. for tea. ",
        "J. K. Rowling wrote it. ",
        '"Really?" she asked. ',
        "It is 3.14 miles etc. ",  # etc. before a capital ends the sentence
        "Nothing else.",
    ]


@pytest.mark.parametrize(
    "text,want",
    [
        # titles and initials before names never end a sentence
        (
            "Dr. Anita Rao met Prof. Greaves at St. Brenna's near Mt. Fuji. Then they left.",
            ["Dr. Anita Rao met Prof. Greaves at St. Brenna's near Mt. Fuji. ", "Then they left."],
        ),
        # company suffixes end a sentence before a capital, not before a lower-case word
        (
            "It joined Meridian Robotics Inc. She was the founder. Meridian Robotics Inc. of Boston grew.",
            ["It joined Meridian Robotics Inc. ", "She was the founder. ", "Meridian Robotics Inc. of Boston grew."],
        ),
        (
            "It was built by Fenwick & Lowe Architects Ltd. Notable alumni include Dr. Ruth Kimani.",
            ["It was built by Fenwick & Lowe Architects Ltd. ", "Notable alumni include Dr. Ruth Kimani."],
        ),
        # dotted abbreviations: only a typical sentence opener starts a new sentence
        (
            "Ada was named for the U.S. Department of Defense. He moved to the U.S. In 1998 he left.",
            ["Ada was named for the U.S. Department of Defense. ", "He moved to the U.S. ", "In 1998 he left."],
        ),
        (
            "He has a Ph.D. in physics. It runs at 9 a.m. The end.",
            ["He has a Ph.D. in physics. ", "It runs at 9 a.m. ", "The end."],
        ),
        # a line break after an abbreviation is still a paragraph boundary
        (
            "Mt. Rainier is in the U.S.\n\nVolcanic eruptions can be devastating.",
            ["Mt. Rainier is in the U.S.\n\n", "Volcanic eruptions can be devastating."],
        ),
        # decimals and approx. before numbers
        (
            "It is 42.195 km long and approx. 3,000 km per week. Ok.",
            ["It is 42.195 km long and approx. 3,000 km per week. ", "Ok."],
        ),
        # ellipses: a boundary before a capital, not before a lower-case continuation
        ("He waited... and waited... Then it rained.", ["He waited... and waited... ", "Then it rained."]),
        # quotes that close after the stop stay with the sentence
        (
            'It became the "Year Without a Summer." Crops failed. She said, \u201cNo.\u201d He left.',
            ['It became the "Year Without a Summer." ', "Crops failed. ", "She said, \u201cNo.\u201d ", "He left."],
        ),
    ],
)
def test_en_awkward_cases(text, want):
    assert split_sentences(text, "en") == want


@pytest.mark.parametrize(
    "text,want",
    [
        ("他说：“今天很好。”然后走了。", ["他说：“今天很好。”", "然后走了。"]),
        ("“真的吗？”她问。「是的！」他答。『好。』", ["“真的吗？”", "她问。", "「是的！」", "他答。", "『好。』"]),
        ("价格约为3.5元，增长了12.5%。下一句", ["价格约为3.5元，增长了12.5%。", "下一句"]),  # decimals never split
        ("他沉默了……很久。（注：见上文。）结束", ["他沉默了……很久。", "（注：见上文。）", "结束"]),
        ("混合 English. 文本！Mixed text? 好", ["混合 English. 文本！", "Mixed text? ", "好"]),
        ("第一行\r\n第二行", ["第一行\r\n", "第二行"]),
    ],
)
def test_zh_awkward_cases(text, want):
    assert split_sentences(text, "zh") == want


def test_en_needs_capital_or_quote_after_stop_and_splits_lines():
    text = "See section 2. it continues. Next one!\nNew paragraph? \u201cQuoted.\u201d Done."
    assert split_sentences(text, "en") == [
        "See section 2. it continues. ",
        "Next one!\n",
        "New paragraph? ",
        "\u201cQuoted.\u201d ",
        "Done.",
    ]


def test_code_splits_at_lines():
    text = "def f(x):\n    return x. Upper\n\nprint(f(1))"
    assert split_sentences(text, "code") == ["def f(x):\n", "    return x. Upper\n", "\n", "print(f(1))"]


@pytest.mark.parametrize("lang", ["zh", "en", "code"])
@pytest.mark.parametrize(
    "text",
    [
        "",
        "一。二！三？",
        "A. B. C.",
        "no stop at all",
        "\n\n",
        "x\n",
        "😀。😀! x",
        "a\r\nb\rc",
        "ＦＵＬＬ。ｗｉｄｔｈ！",
        "U.S.\n\nInc. Ltd. etc. The",
        "......",
        "。。。",
    ],
)
def test_split_is_a_partition(text, lang):
    parts = split_sentences(text, lang)
    assert "".join(parts) == text
    assert all(parts)
