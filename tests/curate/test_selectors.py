"""The per-record selectors, ROUGE-L, MTLD and the record views, without Ray."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from knowlm_ray.curate import selectors as sel
from knowlm_ray.curate.cirs import cirs, code_blocks
from knowlm_ray.curate.config import (
    CIRSSelector,
    CurateConfig,
    LanguageSelector,
    LengthSelector,
    MTLDSelector,
    PIISelector,
    RougeDedup,
)
from knowlm_ray.curate.dedup import (
    bucket_keys,
    candidate_pairs,
    greedy_drops,
    lcs_length,
    rouge_l,
    rouge_l_tokens,
    rouge_tokens,
)
from knowlm_ray.curate.records import Malformed, iter_file, map_strings, plan_ranges, view


def V(output="", instruction="Do it.", input=""):
    return {"instruction": instruction, "input": input, "output": output}


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_equals_rouge_score_on_english_and_chinese():
    """Our LCS gives rouge-score's ROUGE-L F1 when rouge-score gets the same tokens."""
    from rouge_score.rouge_scorer import RougeScorer

    class Tok:
        def tokenize(self, text):
            return rouge_tokens(text)

    ref = RougeScorer(["rougeL"], tokenizer=Tok())
    rng = random.Random(0)
    vocab = "the a cat dog sat on mat 城 市 大 学 river flows list three cities in china".split()
    pairs = [
        ("List three cities in China.", "Please list three large cities in China."),
        ("请列出三个中国城市。", "请列出中国的三个大城市。"),
        ("", "anything"),
    ] + [
        (" ".join(rng.choices(vocab, k=rng.randint(1, 15))), " ".join(rng.choices(vocab, k=rng.randint(1, 15))))
        for _ in range(200)
    ]
    for a, b in pairs:
        assert rouge_l(a, b) == pytest.approx(ref.score(a, b)["rougeL"].fmeasure, abs=1e-12), (a, b)
    # rouge-score's own tokenizer sees no Chinese at all; ours scores it by characters
    assert RougeScorer(["rougeL"]).score("请列出三个中国城市", "请列出三个中国城市")["rougeL"].fmeasure == 0
    assert rouge_l("请列出三个中国城市", "请列出三个中国城市") == 1.0


def test_lcs_brute_force():
    from itertools import combinations

    rng = random.Random(1)
    for _ in range(100):
        a = rng.choices("abc", k=rng.randint(0, 7))
        b = rng.choices("abc", k=rng.randint(0, 7))
        subs = {c for k in range(len(a) + 1) for c in combinations(a, k)}
        best = max((k for k in range(len(b) + 1) for c in combinations(b, k) if c in subs), default=0)
        assert lcs_length(a, b) == best
    assert rouge_l_tokens([], ["x"]) == 0.0


def test_lsh_candidates_find_planted_near_duplicates_and_greedy_keeps_the_first():
    cfg = RougeDedup(name="rouge_dedup")
    texts = [
        "Write a short poem about the autumn moon over the lake.",
        "Write a short poem about the autumn moon over a lake.",  # near dup of 0
        "Explain how photosynthesis turns light into chemical energy.",
        "写一首关于秋天月亮的短诗。",
        "写一首关于秋天月亮的小诗。",  # near dup of 3
        "Write a short poem about the autumn moon over the lake, please.",  # near dup of 0 and 1
    ]
    uids = np.arange(len(texts), dtype=np.int64)
    pairs = candidate_pairs(uids, bucket_keys(texts, cfg, seed=0), cfg.max_bucket_compare)
    assert {(0, 1), (3, 4), (0, 5), (1, 5)} <= pairs
    assert (0, 2) not in pairs
    edges = [(a, b, r) for a, b in sorted(pairs) if (r := rouge_l(texts[a], texts[b])) > cfg.threshold]
    drops = greedy_drops(edges)
    assert set(drops) == {1, 4, 5} and drops[5][0] == 0 and drops[1][0] == 0


def test_greedy_drop_needs_a_kept_earlier_record():
    # 2 is similar only to 1, which is dropped (similar to 0): EasyInstruct compares with kept ones
    assert greedy_drops([(0, 1, 0.8), (1, 2, 0.8)]) == {1: (0, 0.8)}


# ----------------------------------------------------------------------------- MTLD
def test_mtld_equals_lexicalrichness():
    from lexicalrichness import LexicalRichness

    rng = random.Random(2)
    for n in (1, 3, 10, 50, 200):
        for vocab in (3, 10, 100):
            ws = [f"w{rng.randrange(vocab)}" for _ in range(n)]
            ref = LexicalRichness(ws, preprocessor=None, tokenizer=lambda x: x).mtld(threshold=0.72)
            assert sel.mtld_value(" ".join(ws)) == pytest.approx(ref, rel=1e-12)


def test_mtld_selector_drops_low_diversity():
    cfg = MTLDSelector(name="mtld", min=8, max=1000)
    repetitive = "good good good good good good good good good good good good good good"
    varied = (
        "Photosynthesis converts light energy into chemical energy, which plants store as glucose "
        "while releasing oxygen into the surrounding atmosphere during daylight hours."
    )
    assert sel.mtld(V(repetitive), cfg) is not None and sel.mtld(V(repetitive), cfg) < 8
    assert sel.mtld(V(varied), cfg) is None
    assert sel.mtld_value("") == 0.0
    assert sel.mtld_value("浙江大学位于杭州市") > sel.mtld_value("哈哈哈哈哈哈哈哈哈")


# ----------------------------------------------------------------------------- others
def test_length():
    cfg = LengthSelector(name="length", field="output", min_chars=5, max_chars=20)
    assert sel.length(V("hi"), cfg) == 2
    assert sel.length(V("hello there"), cfg) is None
    assert sel.length(V("x" * 21), cfg) == 21


CODE = """Here is a solution:
```python
def collatz(n):
    steps = 0
    while n != 1:
        if n % 2 == 0:
            n //= 2
        else:
            n = 3 * n + 1
        steps += 1
    return steps

print([collatz(k) for k in range(1, 20) if k % 3])
```
"""


def test_cirs_scores_complex_code_above_trivial_code():
    trivial, blocks = cirs("```python\nprint(1)\n```")
    complex_, _ = cirs(CODE)
    assert blocks == 1 and complex_ > 3 * trivial
    assert cirs("Just prose, no code at all.") == (0.0, 0)
    assert cirs("```python\ndef broken(:\n```") == (0.0, 0)  # a fenced block that does not parse
    assert len(code_blocks("x = 1\nfor i in range(3):\n    x += i")) == 1  # unfenced code that parses
    cfg = CIRSSelector(name="cirs", min=5, max=100)
    assert sel.code_complexity(V("```python\nprint(1)\n```"), cfg) == pytest.approx(trivial, abs=1e-3)
    assert sel.code_complexity(V(CODE), cfg) is None
    assert sel.code_complexity(V("no code"), cfg) is None
    assert sel.code_complexity(V("no code"), CIRSSelector(name="cirs", require_code=True)) == "no code"


def test_language():
    cfg = LanguageSelector(name="language", langs=["zh", "en"])
    assert sel.language(V("浙江大学位于杭州市，是一所综合性研究型大学。", "请介绍一下浙江大学。"), cfg) is None
    assert sel.language(V("The river flows through the old town.", "Describe the river."), cfg) is None
    assert sel.language(V("Der Fluss fließt ruhig durch die alte Stadt.", "Beschreibe den Fluss."), cfg) == "de"
    assert sel.language(V("Le fleuve traverse tranquillement la vieille ville.", "Décris le fleuve."), cfg) == "fr"


def test_pii_mask_and_drop_keep_the_record_shape():
    rec = {
        "instruction": json.dumps({"instruction": "抽取", "schema": ["人物"], "input": "张三的邮箱 zs@zju.edu.cn"}),
        "output": "call 13800138000",
    }
    value, masked, what = sel.pii(rec, PIISelector(name="pii", action="mask"))
    assert value is None and what == "email 1, phone 1"
    assert json.loads(masked["instruction"])["input"] == "张三的邮箱 <EMAIL>" and masked["output"] == "call <PHONE>"
    assert view(masked)[0] == "iepile"
    value, masked, _ = sel.pii(rec, PIISelector(name="pii", action="drop"))
    assert value == "email 1, phone 1" and masked is None
    assert sel.pii({"instruction": "hi", "output": "no data"}, PIISelector(name="pii")) == (None, None, "")


# ----------------------------------------------------------------------------- records
def test_views_of_each_format():
    assert view({"instruction": "a", "output": "b"}) == ("alpaca", V("b", "a"))
    iepile = {
        "instruction": json.dumps({"instruction": "抽取实体", "schema": ["人物"], "input": "鲁迅"}),
        "output": "{}",
    }
    assert view(iepile) == ("iepile", {"instruction": "抽取实体", "input": "鲁迅", "output": "{}"})
    label = {"instruction": iepile["instruction"], "label": {"人物": ["鲁迅"]}, "task": "NER"}
    assert view(label)[1]["output"] == '{"人物": ["鲁迅"]}'
    share = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    }
    assert view(share) == ("sharegpt", V("a", "q"))
    msgs = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]
    }
    assert view(msgs) == ("sharegpt", V("a1", "q1\nq2"))
    for bad in (
        [1],
        {"instruction": 3, "output": "x"},
        {"conversations": []},
        {"messages": [{"role": "user", "content": "q"}]},
        {"x": 1},
    ):
        with pytest.raises(Malformed):
            view(bad)


def test_map_strings_leaves_keys_and_numbers():
    assert map_strings({"a": ["x", 1, {"b": "y"}]}, str.upper) == {"a": ["X", 1, {"b": "Y"}]}


def test_byte_ranges_cover_every_line_once(tmp_path):
    p = tmp_path / "r.jsonl"
    lines = [json.dumps({"instruction": f"q{i}", "output": "a" * (i % 50)}) for i in range(500)]
    lines[10] = ""  # a blank line is skipped, its number still counted
    p.write_text("\n".join(lines) + "\n")
    tasks = plan_ranges([p], 1 << 12)
    assert len(tasks) > 5
    got = [(n, obj) for _, f, s, e, first in tasks for n, raw, obj, err in iter_file(p, s, e, first)]
    assert [n for n, _ in got] == [i + 1 for i in range(500) if i != 10]
    assert all(obj["instruction"] == f"q{n - 1}" for n, obj in got)


def test_json_list_file_and_config_paths(tmp_path):
    p = tmp_path / "l.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}\n]\n')
    assert [(n, raw) for n, raw, _, _ in iter_file(p)] == [
        (2, '{"instruction": "a", "output": "b"}'),
        (3, '{"instruction": "c", "output": "d"}'),
    ]
    cfg = CurateConfig(
        inputs=[str(p)], out_dir="rel/out", selectors=[{"name": "length"}, {"name": "pii", "action": "drop"}]
    )
    assert cfg.out_dir.startswith("/") and [s.name for s in cfg.selectors] == ["length", "pii"]
    with pytest.raises(ValueError, match="selectors"):
        CurateConfig(inputs=[str(p)], out_dir="o", selectors=[{"name": "nope"}])
