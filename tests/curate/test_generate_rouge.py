"""ROUGE-L as rouge_score's rougeL F-measure, with Chinese scored per character."""

from __future__ import annotations

import pytest

from knowlm_ray.curate.generate_rouge import RougePool, lcs_length, rouge_l, tokenize


def test_tokens_are_words_and_cjk_characters():
    assert tokenize("List 3 cities, e.g. 杭州市!") == ["list", "3", "cities", "e", "g", "杭", "州", "市"]


def test_rouge_l_by_hand():
    a, b = tokenize("the cat sat on the mat"), tokenize("the cat lay on a mat")
    assert lcs_length(a, b) == 4  # the cat on mat
    assert rouge_l(a, b) == pytest.approx(2 * 4 / 12)
    assert rouge_l(a, a) == 1.0 and rouge_l(a, []) == 0.0 and rouge_l(a, tokenize("dogs bark")) == 0.0


def test_pool_drops_near_copies_in_either_script_and_remembers_what_it_keeps():
    pool = RougePool(["介绍一下浙江大学的历史和现状", "Explain why the sky looks blue during the day."], 0.7)
    ok, score, who = pool.novel("介绍一下浙江大学的历史")  # 11 of 14 characters: F = 22 / 25
    assert not ok and score == pytest.approx(22 / 25) and who == "介绍一下浙江大学的历史和现状"
    assert not pool.novel("Explain why the sky looks blue during the day time.")[0]
    ok, score, _ = pool.novel("Compose a haiku about morning tea.")
    assert ok and score < 0.7 and len(pool.instructions) == 3
    assert not pool.novel("Compose a haiku about morning tea!")[0]  # now in the pool
    pool.remove("Compose a haiku about morning tea.")
    assert pool.novel("Compose a haiku about morning tea!")[0]
