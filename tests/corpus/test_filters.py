"""Quality filters, one by one, on awkward input, and on data/sample (plain Python, no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from knowlm_ray.config import ConfigError, CorpusConfig, FilterConfig
from knowlm_ray.corpus import filters
from knowlm_ray.corpus.filters import (
    FILTER_NAMES,
    Blocklist,
    annotate_batch,
    filter_name,
    filter_reason,
    filter_reasons,
    load_blocklist,
    repetition_stats,
)
from knowlm_ray.corpus.schema import DOC_SCHEMA, FILTERED, OK

from .conftest import SAMPLE_GENERATED_CODE, SAMPLE_JUNK

EN = (
    "The printing press is a device that applies pressure to an inked surface resting upon a medium, "
    "thereby transferring the ink. It was invented in Germany around 1440 by Johannes Gutenberg, and it "
    "spread to more than two hundred cities in a dozen European countries within several decades."
)
ZH = (
    "光合作用是植物、藻类和某些细菌利用光能，把二氧化碳和水转化为储存能量的有机物，并释放出氧气的过程。"
    "它为地球上几乎所有生命提供了能量来源，也维持了大气中氧气和二氧化碳含量的相对稳定。研究表明，ＡＴＰ和"
    "ＮＡＤＰＨ在这一过程中起着关键作用。"
)
CODE = 'import os\n\n\ndef read(path):\n    """Read a file."""\n    with open(path) as fh:\n        return fh.read()\n'
CFG = FilterConfig()


def reason(text, lang="en", cfg=CFG, blocklist=None):
    return filter_reason(text, cfg, lang, blocklist)


def test_clean_documents_pass_including_awkward_ones():
    assert reason(EN) is None and reason(ZH, "zh") is None and reason(CODE, "code") is None
    assert reason(EN.replace(". ", ".\r\n")) is None  # CRLF
    assert reason(ZH.replace("，", ", ").replace("。", "."), "zh") is None  # half-width punctuation
    assert reason(EN + " 😀 🎉", "en") is None  # a few emoji
    mixed = (
        "知识图谱（Knowledge Graph）是一种语义网络，由 Google 在2012年提出，用于增强搜索引擎的能力。"
        "它以三元组（head, relation, tail）的形式存储事实，常用的格式有 RDF 和 JSON-LD。"
    )
    assert reason(mixed, "zh") is None


def test_length():
    assert reason("") == "length: empty"
    assert reason("Too short.").startswith("length: too short (10 < 20")
    long_cfg = FilterConfig.model_validate({"length": {"max_chars": 100}})
    assert reason(EN, cfg=long_cfg).startswith("length: too long")
    off = FilterConfig.model_validate({"length": {"enabled": False}})
    assert reason("Too short.", cfg=off) is None


@pytest.mark.parametrize(
    "text,prefix",
    [
        ("★★★###@@@%%%☆☆☆&&&***！！！###@@@$$$★★★……%%%^^^~~~◆◆◆", "char_ratio: symbol ratio"),
        ("Call 555-0142 555-0199 (555) 010-2233 1-800-555-0100 +1 555 0134", "char_ratio: digit ratio"),
        ("😀😀😀 🎉🎉🎉 😀😀😀 🎉🎉🎉 😀😀😀 🎉🎉🎉 ok", "char_ratio: symbol ratio"),  # emoji only
        ("... --- ... !!! ??? ,,, ;;; ::: ((( ))) --- ...", "char_ratio: letter ratio"),  # prose punctuation only
    ],
)
def test_char_ratio(text, prefix):
    assert reason(text).startswith(prefix)
    assert (
        reason(
            text,
            cfg=FilterConfig.model_validate(
                {"char_ratio": {"enabled": False}, "language": {"enabled": False}, "repetition": {"enabled": False}}
            ),
        )
        is None
    )


def test_char_ratio_thresholds_are_configurable():
    text = "Phone 555-0142 555-0199, fax 555-0100, office hours 9-17 daily."
    assert reason(text).startswith("char_ratio: digit ratio")
    loose = {"char_ratio": {"max_digit_ratio": 0.6, "min_letter_ratio": 0.3}}
    assert reason(text, cfg=FilterConfig.model_validate(loose)) is None


def test_language_by_script_ratio():
    assert reason(EN, "zh").startswith("language: cjk share of letters 0.00 < 0.5 for lang zh")
    assert reason(ZH, "en").startswith("language: latin share")
    assert reason(EN, "zh", FilterConfig.model_validate({"language": {"min_script_ratio": {"zh": 0.0}}})) is None
    assert reason(CODE * 3, "code") is None  # no language check for code


def test_repetition_gopher_rules():
    line = "Click here to subscribe to our newsletter and win a free gift card!"
    assert reason("\n".join([line] * 20)).startswith("repetition: dup_line_frac 0.95")
    paras = "\n\n".join(["A first paragraph that says something.", EN, "A first paragraph that says something."] * 2)
    assert reason(paras).startswith("repetition: dup_line_frac") or reason(paras).startswith("repetition: dup_para")
    spam = " ".join(["buy cheap shoes now"] * 15) + " " + EN
    assert reason(spam).startswith("repetition: top_ngram_char_frac[2]")
    stats = repetition_stats(spam)
    assert stats["top_ngram_char_frac"][2] > 0.2 and stats["dup_ngram_char_frac"][5] > 0.15
    assert repetition_stats(EN)["dup_ngram_char_frac"] == dict.fromkeys(range(5, 11), 0.0)
    zh_spam = "点击这里免费领取优惠券，限时抢购，先到先得！" * 10
    assert reason(zh_spam, "zh").startswith("repetition:")
    short = "good good good good"  # under min_words: the n-gram rules do not apply
    assert (
        reason(
            short + " enough text here",
            cfg=FilterConfig.model_validate({"length": {"min_chars": 1}, "char_ratio": {"enabled": False}}),
        )
        is None
    )


def test_code_rules():
    gen = "# Code generated by protoc-gen-py. DO NOT EDIT.\n" + CODE
    assert reason(gen, "code") == "code: generated file (marker 'do not edit')"
    assert reason(CODE + "\n" * 10 + "# DO NOT EDIT below\n", "code") is None  # marker only counts up top
    assert reason(CODE + "x = '" + "a" * 1200 + "'\n", "code").startswith("code: longest line 1206 > 1000")
    minified = ";".join(f"var a{i}=b{i}" for i in range(60))
    assert reason(minified + "\n" + minified, "code").startswith("code: mean line length")
    symbols = "\n".join(["{[()]}<>=+-*/%&|^~!@#$" * 3] * 10)
    assert reason(symbols, "code").startswith("code: alphanumeric share")
    assert reason(gen, "code", FilterConfig.model_validate({"code": {"enabled": False}})) is None
    assert reason(gen, "en") is None or not reason(gen, "en").startswith("code:")  # code rules: lang code only


def test_blocklist_builtin_custom_and_thresholds(tmp_path):
    terms, info = load_blocklist(["builtin:zh", "builtin:en"])
    assert [i["file"] for i in info] == ["builtin:zh", "builtin:en"] and all(i["terms"] >= 10 for i in info)
    assert len(terms) == sum(i["terms"] for i in info) and not any(t.startswith("#") for t in terms)
    bl = Blocklist(terms)
    assert bl.hits(EN + " Get your Online  Casino Bonus today!") == ["Online  Casino Bonus"]
    assert bl.hits("onlinecasino bonuses") == []  # ASCII terms only on word boundaries
    assert bl.hits(ZH + "欢迎访问澳门赌场官网") == ["澳门赌场官网"]  # CJK terms as substrings
    assert reason(EN + " Online casino bonus.", blocklist=bl).startswith("blocklist: 1 hit(s) >= 1")
    two = FilterConfig.model_validate({"blocklist": {"min_hits": 2}})
    assert reason(EN + " Online casino bonus.", cfg=two, blocklist=bl) is None
    custom = tmp_path / "mine.txt"
    custom.write_text("# my list\nGutenberg\n\n", encoding="utf-8")
    terms, info = load_blocklist([str(custom)])
    assert terms == ["Gutenberg"] and info[0]["terms"] == 1 and len(info[0]["sha256"]) == 64
    assert reason(EN, blocklist=terms).startswith("blocklist:")
    off = FilterConfig.model_validate({"blocklist": {"enabled": False}})
    assert reason(EN, cfg=off, blocklist=terms) is None
    with pytest.raises(ConfigError, match="block-list 'nope.txt' not found"):
        load_blocklist(["nope.txt"])


def test_annotate_batch_names_the_filter():
    rows = [
        {
            "doc_id": f"s/f:{i}",
            "source": "s",
            "lang": lang,
            "file": "f",
            "line": i,
            "text": text,
            "status": OK,
            "reason": None,
            "raw": None,
            "key": None,
        }
        for i, (lang, text) in enumerate([("en", EN), ("en", "x"), ("zh", EN), ("en", EN + " free porn")])
    ]
    out = annotate_batch(pa.Table.from_pylist(rows, schema=DOC_SCHEMA), CFG.model_dump(), ["free porn"]).to_pylist()
    assert [r["status"] for r in out] == [OK, FILTERED, FILTERED, FILTERED]
    assert [filter_name(r["reason"]) for r in out] == [None, "length", "language", "blocklist"]
    assert out[0]["key"] and out[1]["key"] == "~s/f:1" and out[1]["text"] == ""


def test_sample_junk_and_generated_code_dropped_nothing_else(sample_rows):
    """data/sample/README.md: the 6 + 6 junk documents of zh.jsonl / en.jsonl and the generated
    code file are dropped, every other readable document passes (tiny_corpus.yaml filters)."""
    from .conftest import tiny_corpus_config

    cfg: CorpusConfig = tiny_corpus_config(tokenizer="x")
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    dropped = {}
    for row in sample_rows:
        if row["status"] == OK and (why := filter_reason(row["text"], cfg.filters, row["lang"], terms)):
            dropped[row["doc_id"]] = why
    want = {f"{f}:{n:09d}" for f, lines in SAMPLE_JUNK.items() for n in lines} | {SAMPLE_GENERATED_CODE}
    assert set(dropped) == want, {k: v for k, v in dropped.items() if k not in want}
    assert {filter_name(v) for v in dropped.values()} <= set(FILTER_NAMES)
    assert filter_name(dropped[SAMPLE_GENERATED_CODE]) == "code"
    assert (
        filter_name(dropped["baike/zh.jsonl:000000050"])
        == filter_name(dropped["wiki/en.jsonl:000000037"])
        == "repetition"
    )


def _repetitive_documents() -> list[tuple[str, str]]:
    """Documents that trip each n-gram rule, and ones just under: (lang, text)."""
    rng = __import__("random").Random(3)
    vocab = EN.replace(",", "").replace(".", "").split()
    docs = [("en", EN), ("zh", ZH), ("code", CODE), ("en", ""), ("en", "short text only"), ("zh", "点击这里" * 3)]
    for reps in (2, 3, 5, 8, 15):
        for n in (2, 3, 4, 5, 7, 10):
            gram = " ".join(rng.choice(vocab) for _ in range(n))
            filler = " ".join(rng.choice(vocab) for _ in range(rng.randint(10, 120)))
            docs.append(("en", " ".join([gram] * reps) + " " + filler + ". " + EN))
            docs.append(("zh", "这是一段" * reps + ZH[: rng.randint(20, 120)]))
    return docs + [("en", EN + " Online casino bonus."), ("en", "\n".join(["Same line, again and again."] * 6))]


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        # later dup limits below earlier ones: the early stop must not skip them
        FilterConfig.model_validate(
            {
                "repetition": {
                    "max_dup_ngram_char_frac": {5: 0.9, 6: 0.05, 10: 0.01},
                    "max_top_ngram_char_frac": {3: 0.05},
                }
            }
        ),
        FilterConfig.model_validate({"repetition": {"min_words": 0}, "length": {"min_chars": 0}}),
    ],
)
def test_batched_filters_equal_one_at_a_time(cfg, sample_rows, monkeypatch):
    """filter_reasons (the pipeline's, n-grams grouped over many documents) gives exactly
    filter_reason's answer for every document, in batches that cut groups anywhere."""
    docs = _repetitive_documents() + [(r["lang"], r["text"]) for r in sample_rows if r["status"] == OK]
    texts, langs = [t for _, t in docs], [lang for lang, _ in docs]
    bl = Blocklist(load_blocklist(["builtin:zh", "builtin:en"])[0])
    want = [filter_reason(t, cfg, lang, bl) for t, lang in zip(texts, langs)]
    assert sum(1 for w in want if w and "ngram" in w) >= 10  # the n-gram rules are really exercised
    for size in (1, 7, 128):
        monkeypatch.setattr(filters, "NGRAM_BATCH", size)
        assert filter_reasons(texts, cfg, langs, bl) == want
