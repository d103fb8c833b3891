"""Greedy sample building, tokenisation by sentence, packing (plain Python, no Ray)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from knowlm_ray.corpus.pack import pack_greedy, position_ids, segment_lengths
from knowlm_ray.corpus.samples import doc_to_sample_rows, docs_to_samples, load_tokenizer
from knowlm_ray.corpus.schema import DOC_SCHEMA, OK, SAMPLE_SCHEMA, SHARD_SCHEMA, SHORT
from knowlm_ray.corpus.split import build_samples, encode_documents, encode_sentences, split_sentences

BOS, EOS = 1, 2


def _check(sentences, max_tokens):
    built = build_samples(sentences, max_tokens, BOS, EOS)
    flat = [t for s in built.samples for t in s]
    assert flat == [BOS] + [t for s in sentences for t in s] + [EOS]  # nothing lost or added
    assert all(0 < len(s) <= max_tokens for s in built.samples)
    assert [s[0] == BOS for s in built.samples] == [True] + [False] * (len(built.samples) - 1)
    assert [s[-1] == EOS for s in built.samples] == [False] * (len(built.samples) - 1) + [True]
    return built


def test_greedy_merge_keeps_sentences_whole():
    sentences = [[10] * 3, [11] * 3, [12] * 4, [13] * 2]
    built = _check(sentences, 8)
    # [BOS 10 10 10 11 11 11] (7) | [12 12 12 12 13 13 EOS] (7): no sentence straddles a sample
    assert built.samples == [[BOS, 10, 10, 10, 11, 11, 11], [12, 12, 12, 12, 13, 13, EOS]]
    assert built.sentences_cut == 0


def test_long_sentence_is_cut_into_max_token_pieces():
    built = _check([[5] * 2, [7] * 20, [9]], 8)
    assert built.sentences_cut == 1
    # [BOS 5 5] [7*8] [7*8] [7*4 9 EOS]: the cut sentence's last piece merges on like a sentence
    assert [len(s) for s in built.samples] == [3, 8, 8, 6]


def test_greedy_split_property_random():
    rng = random.Random(0)
    for _ in range(300):
        max_tokens = rng.randint(2, 40)
        sentences = [[rng.randint(3, 99)] * rng.randint(1, 60) for _ in range(rng.randint(1, 12))]
        built = _check(sentences, max_tokens)
        # greedy: a sample plus the next sample's first whole sentence would not have fitted
        assert len(built.samples) <= sum(len(s) for s in sentences) + 2


def test_empty_document_builds_nothing():
    assert build_samples([], 8, BOS, EOS).samples == []
    assert build_samples([[], []], 8, BOS, EOS).samples == []


DOCS = [
    ("zh", "知识图谱是一种结构化的语义知识库。它描述概念及其相互关系！“你好。”他说。\n浙江大学位于杭州市。"),
    (
        "en",
        "Mr. Smith paid $3.50 for it! Dr. Watson lives in the U.S. and works at Baker Street. "
        "The quick brown fox jumps over the lazy dog.\nKnowledge graphs describe entities.",
    ),
    ("code", "import os\nclass Reader:\n    def __init__(self, path):\n        self.path = os.path.abspath(path)\n"),
]


@pytest.mark.parametrize("lang,text", DOCS)
def test_sentence_tokens_concatenate_to_the_document(corpus_tokenizer, lang, text):
    tok = load_tokenizer(str(corpus_tokenizer))
    sentences = split_sentences(text, lang)
    assert len(sentences) > 2
    per_sentence = encode_sentences(tok, sentences)
    flat = [t for ids in per_sentence for t in ids]
    assert flat == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(flat) == text  # no "▁" glued onto sentence starts
    for max_tokens in (8, 13, 64):
        built = _check(per_sentence, max_tokens)
        assert tok.decode([t for s in built.samples for t in s], skip_special_tokens=True) == text


def test_slow_tokenizer_falls_back_to_per_sentence(corpus_tokenizer):
    fast = load_tokenizer(str(corpus_tokenizer))

    class Slow:
        is_fast = False

        def __call__(self, texts, add_special_tokens, **kw):
            return fast(texts, add_special_tokens=add_special_tokens, **kw)

    sentences = split_sentences(DOCS[1][1], "en")
    assert encode_sentences(Slow(), sentences) == [fast(s, add_special_tokens=False)["input_ids"] for s in sentences]


def test_doc_rows_mark_short_samples(corpus_tokenizer):
    tok = load_tokenizer(str(corpus_tokenizer))
    doc = {
        "doc_id": "d/x:000000001",
        "source": "d",
        "file": "x",
        "line": 1,
        "lang": "zh",
        "text": DOCS[0][1],
        "status": OK,
        "reason": None,
        "raw": None,
    }
    rows = list(doc_to_sample_rows(doc, tok, max_tokens=16, min_tokens=6))
    assert [r["sample"] for r in rows] == list(range(len(rows)))
    assert all(r["n_tokens"] <= 16 for r in rows)
    kept = [r for r in rows if r["status"] == OK]
    short = [r for r in rows if r["status"] == SHORT]
    assert all(len(r["input_ids"]) >= 6 for r in kept) and kept
    assert all(r["input_ids"] == [] and r["n_tokens"] < 6 for r in short)
    assert rows[0]["input_ids"][0] == tok.bos_token_id or rows[0]["status"] == SHORT
    passthrough = list(doc_to_sample_rows({**doc, "status": "filtered", "reason": "x"}, tok, 16, 1))
    assert [(r["sample"], r["status"], r["input_ids"]) for r in passthrough] == [(-1, "filtered", [])]


def test_batch_tokenising_equals_per_document_rows(corpus_tokenizer):
    """The Ray stage's batch path (one tokenizer call per batch, columns built directly) gives
    exactly the rows of the per-document core, whatever the documents hold."""
    tok = load_tokenizer(str(corpus_tokenizer))
    texts = [
        ("zh", DOCS[0][1]),
        ("en", DOCS[1][1]),
        ("code", DOCS[2][1]),
        ("en", ""),
        ("en", "   "),
        ("code", "x = '<s>' + '</s>'\n<unk> stays text\n"),
        ("zh", "表情😀😀。全角，标点！\r\n第二行。"),
        ("en", "word " * 700),
    ]
    docs = [
        {
            "doc_id": f"d/x:{i:09d}",
            "source": "d",
            "lang": lang,
            "file": "x",
            "line": i,
            "text": text,
            "status": OK,
            "reason": None,
            "raw": None,
            "key": None,
        }
        for i, (lang, text) in enumerate(texts)
    ]
    docs.insert(
        2, {**docs[0], "doc_id": "d/x:bad", "status": "malformed", "text": None, "reason": "bad JSON", "raw": "{"}
    )
    sentences = [split_sentences(d["text"], d["lang"]) for d in docs if d["status"] == OK]
    assert encode_documents(tok, sentences) == [encode_sentences(tok, s) for s in sentences]
    for ids, sents in zip(encode_documents(tok, sentences), sentences):
        assert [t for s in ids for t in s] == (
            tok("".join(sents), add_special_tokens=False, split_special_tokens=True)["input_ids"] if sents else []
        )
    for tail in ("keep", "drop", "backfill"):
        got = docs_to_samples(pa.Table.from_pylist(docs, schema=DOC_SCHEMA), tok, 16, 4, tail, 0.5)
        want = [r for d in docs for r in doc_to_sample_rows(d, tok, 16, 4, tail, 0.5)]
        assert got.schema == SAMPLE_SCHEMA and got.to_pylist() == want


def _shard(rows):
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


PACK_ROWS = [
    {"input_ids": [1, 5, 2], "doc_id": "a/1", "source": "a"},
    {"input_ids": [1, 6, 6, 2], "doc_id": "a/2", "source": "a"},
    {"input_ids": [1, 7, 7, 7], "doc_id": "a/3", "source": "a"},
    {"input_ids": [8, 2], "doc_id": "a/3", "source": "a"},
    {"input_ids": [1, 9, 2], "doc_id": "b/1", "source": "b"},
]


def test_pack_whole_samples_records_document_starts():
    packed = pack_greedy(_shard(PACK_ROWS), max_tokens=8, split_samples=False).to_pylist()
    assert packed == [
        {"input_ids": [1, 5, 2, 1, 6, 6, 2], "doc_id": "a/1", "source": "a", "doc_starts": [0, 3]},
        {"input_ids": [1, 7, 7, 7, 8, 2], "doc_id": "a/3", "source": "a", "doc_starts": [0]},  # one doc, 2 samples
        {"input_ids": [1, 9, 2], "doc_id": "b/1", "source": "b", "doc_starts": [0]},  # never mixes sources
    ]


def test_pack_stream_fills_rows_exactly_and_keeps_boundaries():
    packed = pack_greedy(_shard(PACK_ROWS), max_tokens=5).to_pylist()
    assert packed == [
        {"input_ids": [1, 5, 2, 1, 6], "doc_id": "a/1", "source": "a", "doc_starts": [0, 3]},
        {"input_ids": [6, 2, 1, 7, 7], "doc_id": "a/2", "source": "a", "doc_starts": [0, 2]},
        {"input_ids": [7, 8, 2], "doc_id": "a/3", "source": "a", "doc_starts": [0]},
        {"input_ids": [1, 9, 2], "doc_id": "b/1", "source": "b", "doc_starts": [0]},
    ]
    assert position_ids([0, 2], 5).tolist() == [0, 1, 0, 1, 2]
    assert segment_lengths([0, 3], 5) == [3, 2]


def test_pack_property_random():
    """Random shards: nothing lost, rows <= max_tokens (== except a source's last), and every
    document start (BOS) is recorded in doc_starts."""
    rng = random.Random(1)
    for _ in range(200):
        rows, n_docs = [], rng.randint(1, 12)
        for d in range(n_docs):
            source = "ab"[d * 2 // n_docs]
            parts = rng.randint(1, 3)
            for k in range(parts):
                body = [rng.randint(3, 99) for _ in range(rng.randint(1, 9))]
                ids = ([BOS] if k == 0 else []) + body + ([EOS] if k == parts - 1 else [])
                rows.append({"input_ids": ids, "doc_id": f"{source}/{d:03d}", "source": source})
        max_tokens = rng.randint(11, 30)  # >= the longest sample, as the split guarantees
        for split in (True, False):
            packed = pack_greedy(_shard(rows), max_tokens, split_samples=split).to_pylist()
            for source in "ab":
                want = [t for r in rows if r["source"] == source for t in r["input_ids"]]
                got = [r for r in packed if r["source"] == source]
                assert [t for r in got for t in r["input_ids"]] == want
                if split:
                    assert all(len(r["input_ids"]) == max_tokens for r in got[:-1])
            for r in packed:
                assert 0 < len(r["input_ids"]) <= max_tokens
                assert r["doc_starts"][0] == 0 and r["doc_starts"] == sorted(set(r["doc_starts"]))
                bos_at = [i for i, t in enumerate(r["input_ids"]) if t == BOS]
                assert set(bos_at) <= set(r["doc_starts"])
                assert set(r["doc_starts"][1:]) == set(bos_at) - {0}


_PIECES = [
    "<s>",
    "</s>",
    "<unk>",
    "知识图谱",
    "是",
    "一种",
    "结构化的",
    "。",
    "！",
    "？",
    "；",
    "“你好。”",
    "他说",
    "3.14",
    "ＡＴＰ",
    "The",
    "quick",
    "fox",
    "Dr.",
    "U.S.",
    "e.g.",
    "...",
    "Mr. Smith",
    ".",
    "!",
    "?",
    '"',
    "😀",
    "\r\n",
    "\n",
    "\n\n",
    "  ",
    "，",
    "def f(x):",
    "    return x",
    "#",
    "$3.50",
    "——",
    "……",
]


def _random_doc(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:  # one enormous sentence without any punctuation
        return " ".join(rng.choice(["alpha", "beta", "知识", "gamma"]) for _ in range(rng.randint(200, 600)))
    return "".join(rng.choice(_PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, 80)))


def test_samples_never_exceed_max_tokens_random_docs(corpus_tokenizer):
    """Property test (seeded random docs: mixed zh/en/code, emoji, CRLF, no punctuation at all,
    over-long sentences): every sample <= max_tokens, the samples concatenate to BOS + the
    document's encoding + EOS, BOS only on the first sample and EOS only on the last."""
    tok = load_tokenizer(str(corpus_tokenizer))
    rng = random.Random(7)
    for i in range(120):
        text, lang = _random_doc(rng), rng.choice(["zh", "en", "code"])
        max_tokens = rng.choice([8, 13, 32, 100])
        doc = {
            "doc_id": f"r/x:{i:09d}",
            "source": "r",
            "file": "x",
            "line": i,
            "lang": lang,
            "text": text,
            "status": OK,
            "reason": None,
            "raw": None,
        }
        rows = list(doc_to_sample_rows(doc, tok, max_tokens=max_tokens, min_tokens=1))
        assert all(r["n_tokens"] <= max_tokens for r in rows), (text, lang, max_tokens)
        ids = [r["input_ids"] for r in rows if r["status"] == OK]
        encoded = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if not encoded:
            assert ids == [] and [r["status"] for r in rows] == [SHORT]
            continue
        assert [t for s in ids for t in s] == [tok.bos_token_id, *encoded, tok.eos_token_id]
        assert [s[0] == tok.bos_token_id for s in ids] == [True] + [False] * (len(ids) - 1)
        assert [s[-1] == tok.eos_token_id for s in ids] == [False] * (len(ids) - 1) + [True]
        assert [r["tail"] for r in rows] == [False] * (len(rows) - 1) + [len(rows) > 1]


def test_special_token_strings_in_text_stay_text(corpus_tokenizer):
    tok = load_tokenizer(str(corpus_tokenizer))
    text = 'SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")\nids.insert(0, vocab["<s>"])\n'
    doc = {
        "doc_id": "c/x.py",
        "source": "c",
        "file": "x.py",
        "line": 0,
        "lang": "code",
        "text": text,
        "status": OK,
        "reason": None,
        "raw": None,
    }
    flat = [t for r in doc_to_sample_rows(doc, tok, max_tokens=16, min_tokens=1) for t in r["input_ids"]]
    assert flat.count(tok.bos_token_id) == flat.count(tok.eos_token_id) == 1
    assert flat[0] == tok.bos_token_id and flat[-1] == tok.eos_token_id
    assert tok.decode(flat[1:-1]) == text


def test_short_tail_keep_backfill_drop():
    sentences = [[10] * 3, [11] * 3, [12] * 2, [13]]
    keep = build_samples(sentences, 8, BOS, EOS, tail="keep", short_tail=5)
    assert keep.samples == [[BOS, 10, 10, 10, 11, 11, 11], [12, 12, 13, EOS]]
    back = build_samples(sentences, 8, BOS, EOS, tail="backfill", short_tail=5)
    # whole preceding sentences, backwards, while they fit: [11 11 11] yes, [BOS 10 10 10] no
    assert back.samples == [keep.samples[0], [11, 11, 11, 12, 12, 13, EOS]] and back.backfill_tokens == 3
    drop = build_samples(sentences, 8, BOS, EOS, tail="drop", short_tail=5)
    assert drop.samples == keep.samples[:1] and drop.dropped_tail == [12, 12, 13, EOS]
    # a tail that is not short, or a one-sample document, is never touched
    assert build_samples(sentences, 8, BOS, EOS, tail="drop", short_tail=4).samples == keep.samples
    assert build_samples([[10] * 2], 8, BOS, EOS, tail="drop", short_tail=8).samples == [[BOS, 10, 10, EOS]]
    with pytest.raises(ValueError, match="tail must be one of"):
        build_samples(sentences, 8, BOS, EOS, tail="merge")


def test_backfill_property_random():
    rng = random.Random(1)
    for _ in range(300):
        max_tokens = rng.randint(4, 40)
        sentences = [[rng.randint(3, 99)] * rng.randint(1, 30) for _ in range(rng.randint(1, 12))]
        keep = build_samples(sentences, max_tokens, BOS, EOS)
        back = build_samples(sentences, max_tokens, BOS, EOS, tail="backfill", short_tail=max_tokens // 2)
        assert back.samples[:-1] == keep.samples[:-1]
        tail, prefix = back.samples[-1], back.backfill_tokens
        assert tail[prefix:] == keep.samples[-1] and len(tail) <= max_tokens
        flat = [t for s in keep.samples for t in s]
        if prefix:  # the repeated tokens are exactly the ones before the tail (BOS never repeated)
            assert len(keep.samples) > 1 and len(keep.samples[-1]) < max_tokens // 2
            before = flat[: len(flat) - len(keep.samples[-1])]
            assert tail[:prefix] == [t for t in before if t != BOS][-prefix:]
        assert [s[0] == BOS for s in back.samples] == [True] + [False] * (len(back.samples) - 1)


def test_dropped_tail_is_a_counted_short_row(corpus_tokenizer):
    tok = load_tokenizer(str(corpus_tokenizer))
    text = " ".join(f"Sentence number {i} talks about rivers and mills." for i in range(7))
    doc = {
        "doc_id": "a/1",
        "source": "a",
        "file": "f",
        "line": 1,
        "status": OK,
        "reason": None,
        "raw": None,
        "text": text,
        "lang": "en",
    }
    keep = list(doc_to_sample_rows(doc, tok, 100, 1))
    drop = list(doc_to_sample_rows(doc, tok, 100, 1, tail="drop", short_tail=0.5))
    assert keep[-1]["tail"] and keep[-1]["n_tokens"] < 50  # 3 + 3 + 1 sentences: a short tail
    assert [r["input_ids"] for r in drop[:-1]] == [r["input_ids"] for r in keep[:-1]]
    assert drop[-1]["status"] == SHORT and drop[-1]["reason"].startswith("short tail")
    back = list(doc_to_sample_rows(doc, tok, 100, 1, tail="backfill", short_tail=0.5))
    assert back[-1]["backfill"] > 0 and back[-1]["n_tokens"] == keep[-1]["n_tokens"] + back[-1]["backfill"]
    assert all(r["n_tokens"] <= 100 for r in back)
