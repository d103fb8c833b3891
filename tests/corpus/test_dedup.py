"""MinHash LSH near-dedup cores (plain Python, no Ray) and data/sample's planted near duplicates."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from knowlm_ray.config import ConfigError, CorpusConfig, DedupConfig, load_config
from knowlm_ray.corpus.dedup import (
    BAND,
    EXACT,
    SIG_COLUMN,
    Signer,
    band_keys,
    bucket_pairs,
    bucket_rows,
    connected_components,
    doc_signature,
    jaccard,
    local_near_dups,
    lsh_params,
    mark_duplicates,
    partition_buckets,
    resolve,
    shingle_hashes,
    shingle_mode,
    shingles,
)
from knowlm_ray.corpus.filters import dedup_key, filter_reason, load_blocklist
from knowlm_ray.corpus.schema import DOC_SCHEMA, EXACT_DUP, NEAR_DUP, OK

from .conftest import SAMPLE_NEAR_DUPS, TINY_CORPUS, tiny_corpus_config


def test_lsh_params_from_threshold_or_config():
    cfg = DedupConfig()
    assert lsh_params(cfg) == _optimal_param(0.8, 128, 0.2, 0.8) == (12, 10)
    assert lsh_params(DedupConfig(bands=16, rows=8)) == (16, 8)
    with pytest.raises(ValueError, match="go together"):
        DedupConfig(bands=16)
    with pytest.raises(ConfigError, match="num_perm"):
        load_config(CorpusConfig, TINY_CORPUS, ["dedup.bands=20", "dedup.rows=10"])


def test_shingles_words_for_latin_characters_for_cjk_and_code():
    assert shingle_mode("The quick brown fox", "en") == "word"
    assert shingle_mode("知识图谱是一种用于描述实体及其关系的语义网络 (semantic network)", "en") == "char"
    assert shingle_mode("def f(x): return x", "code") == "char"
    words = shingles("The  QUICK brown fox jumps over the lazy dog", "en", ngram=5)
    assert b"the quick brown fox jumps" in words and len(words) == 5
    assert shingles("Ｆｏｏ ｂａｒ", "en", ngram=5) == {b"foo bar"}  # NFKC, case-folded, short: one shingle
    chars = shingles("知识图谱是一种", "zh", char_ngram=5)
    assert chars == {"知识图谱是".encode(), "识图谱是一".encode(), "图谱是一种".encode()}
    assert shingles("  \n ", "en") == set()


@pytest.mark.parametrize(
    "text,lang",
    [
        ("The quick brown fox jumps over the lazy dog again and again and again", "en"),
        ("知识图谱是一种结构化的语义知识库，用于描述物理世界中的概念及其相互关系。", "zh"),
        ("def f(x):\n    return x + 1\n", "code"),
        ("short", "en"),
        ("", "zh"),
    ],
)
def test_shingle_hashes_match_the_shingles(text, lang):
    hashes = shingle_hashes(text, lang)
    assert hashes.dtype == np.uint32 and len(hashes) == len(shingles(text, lang)) == len(set(hashes.tolist()))
    assert np.array_equal(shingle_hashes(text, lang), hashes)


def test_signatures_are_datasketch_minhash_and_deterministic():
    items = shingle_hashes("The quick brown fox jumps over the lazy dog again and again", "en")
    signer = Signer(128, seed=3)
    sig = signer.signature(items)
    ref = MinHash(num_perm=128, seed=3, hashfunc=int)
    ref.update_batch(items.tolist())
    assert sig.dtype == np.uint32 and np.array_equal(sig, ref.hashvalues)
    assert np.array_equal(Signer(128, 3).signature(items), sig)
    assert not np.array_equal(Signer(128, 4).signature(items), sig)
    keys = band_keys(sig.reshape(1, -1), 12, 10)[0].tolist()
    assert len(keys) == 12 and len(set(keys)) == 12  # the band index is part of the key


def _doc(doc_id, text, lang="en", status=OK):
    return {
        "doc_id": doc_id,
        "source": "s",
        "lang": lang,
        "file": "f",
        "line": 1,
        "text": text,
        "status": status,
        "reason": None,
        "raw": None,
        "key": None,
    }


BASE = (
    "Tides are the rise and fall of sea levels caused by the combined effects of the gravitational "
    "forces exerted by the Moon and the Sun and the rotation of the Earth. Most places have two high "
    "tides and two low tides every lunar day, and the tidal range varies from place to place. Some "
    "places, for example parts of the Gulf of Mexico, have only one high tide a day. The largest tidal "
    "ranges in the world occur in the Bay of Fundy in Canada, where the difference between high and low "
    "water can exceed sixteen metres during spring tides, which follow the new and the full moon."
)


def _edit(text, rng, n):
    words = text.split()
    for _ in range(n):
        words[rng.randrange(len(words))] = rng.choice(["sea", "ocean", "water", "coast"])
    return " ".join(words)


def _buckets(docs, cfg, seed=0, exact=False):
    """BUCKET_SCHEMA rows of the ok documents, and their signatures by doc_id."""
    ok = [d for d in docs if d["status"] == OK]
    sigs = {d["doc_id"]: doc_signature(d["text"], d["lang"], cfg, seed) for d in ok}
    keys = [dedup_key(d["text"]) for d in ok] if exact else None
    bands, rows = lsh_params(cfg)
    return bucket_rows([d["doc_id"] for d in ok], keys, list(sigs.values()), bands, rows), sigs


def _pairs(table):
    return [(r["a"], r["b"], r["kind"]) for r in table.to_pylist() if r["a"] is not None]


def test_bucket_pairs_verified_into_components_with_the_smallest_id():
    rng = random.Random(0)
    docs = [
        _doc("d/3", BASE),
        _doc("d/1", _edit(BASE, rng, 1)),
        _doc("d/2", _edit(BASE, rng, 1)),
        _doc("d/9", "An unrelated document about bread, flour, water, salt and yeast, baked in an oven."),
        _doc("d/5", BASE, status="filtered"),
    ]  # not ok: never signed
    cfg = DedupConfig(near=True)
    table, sigs = _buckets(docs, cfg)
    assert table.num_rows == 4 * 12 and "d/5" not in table["doc_id"].to_pylist()
    assert set(table["kind"].to_pylist()) == {BAND}
    out = bucket_pairs(table, cfg.max_bucket_compare)
    pairs = _pairs(out)
    assert out["collisions"][-1].as_py() >= len(pairs) and len(pairs) == len(set(pairs))
    assert {(a, b) for a, b, _ in pairs} <= {("d/1", "d/2"), ("d/1", "d/3"), ("d/2", "d/3")} and len(pairs) >= 2
    exact, near, counts = resolve(pairs, lambda ids: {i: sigs[i] for i in ids}, cfg.threshold)
    assert exact == {} and near == {"d/2": "d/1", "d/3": "d/1"} and counts["near_dups"] == 2
    assert counts["candidate_pairs"] == len(pairs) >= counts["edges"] >= 2 and counts["clusters"] == 1
    assert local_near_dups(docs, cfg) == near
    assert resolve(pairs, lambda ids: {i: sigs[i] for i in ids}, 1.01)[1] == {}  # nothing verified above 1


def test_exact_pairs_come_first_and_candidates_touching_them_are_left_out():
    rng = random.Random(1)
    near_copy = _edit(BASE, rng, 1)
    docs = [
        _doc("d/4", BASE),
        _doc("d/2", "  " + BASE.replace(" ", "\n ", 3)),  # exact copy of d/4
        _doc("d/7", near_copy),
        _doc("d/8", "Bread is made of flour, water, salt and yeast, then baked."),
    ]
    cfg = DedupConfig(near=True)
    table, sigs = _buckets(docs, cfg, exact=True)
    assert table["kind"].to_pylist().count(EXACT) == 4
    pairs = _pairs(bucket_pairs(table, cfg.max_bucket_compare))
    assert ("d/2", "d/4", EXACT) in pairs and ("d/2", "d/4", BAND) in pairs  # same text: every band too
    exact, near, counts = resolve(pairs, lambda ids: {i: sigs[i] for i in ids}, cfg.threshold)
    # d/4 is an exact copy of d/2; d/7 is near d/2 (d/4 is out of the near graph: no d/4-d/7 pair)
    assert exact == {"d/4": "d/2"} and near == {"d/7": "d/2"} and counts["candidate_pairs"] == 1


def test_connected_components_order_independent():
    edges = [("b", "c"), ("c", "d"), ("x", "y"), ("a", "d"), ("y", "z")]
    want = {"b": "a", "c": "a", "d": "a", "y": "x", "z": "x"}
    for seed in range(5):
        random.Random(seed).shuffle(edges)
        assert connected_components(edges) == want
    assert connected_components([]) == {}


def test_large_bucket_is_compared_against_its_first_members():
    docs = [_doc(f"d/{i:03d}", BASE) for i in range(40)]
    cfg = DedupConfig(near=True, max_bucket_compare=3)
    table, _ = _buckets(docs, cfg)
    out = bucket_pairs(table, cfg.max_bucket_compare)
    assert len(_pairs(out)) == 39 + 38 + 37  # bounded work: 3 members compared, each pair once
    assert out["collisions"][-1].as_py() == 12 * (39 + 38 + 37)  # (bucket, pair) collisions
    assert local_near_dups(docs, cfg) == {f"d/{i:03d}": "d/000" for i in range(1, 40)}


def test_mark_duplicates_only_touches_listed_ok_rows_and_drops_extra_columns():
    batch = pa.Table.from_pylist(
        [_doc("a", "x"), _doc("b", "y"), _doc("c", "z", status="filtered"), _doc("d", "w")], schema=DOC_SCHEMA
    )
    batch = batch.append_column("sig", pa.array([b"1", b"2", None, b"4"], pa.binary()))
    marks = {"b": (NEAR_DUP, "a"), "c": (NEAR_DUP, "a"), "d": (EXACT_DUP, "a")}
    out = mark_duplicates(batch, marks)
    assert out.schema == DOC_SCHEMA
    assert [(r["status"], r["reason"], r["text"]) for r in out.to_pylist()] == [
        (OK, None, "x"),
        (NEAR_DUP, "near duplicate of a", ""),
        ("filtered", None, "z"),
        (EXACT_DUP, "duplicate of a", ""),
    ]
    assert mark_duplicates(batch, {}).to_pylist() == batch.select(DOC_SCHEMA.names).to_pylist()


def test_jaccard_helper():
    assert jaccard({1, 2}, {2, 3}) == 1 / 3 and jaccard(set(), set()) == 1.0


@pytest.fixture(scope="module")
def sample_survivors(sample_rows):
    """data/sample documents that pass the filters and exact dedup (tiny_corpus.yaml)."""
    cfg = tiny_corpus_config(tokenizer="x")
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    seen, out = set(), []
    for row in sorted(sample_rows, key=lambda r: r["doc_id"]):
        if row["status"] != OK or filter_reason(row["text"], cfg.filters, row["lang"], terms):
            continue
        key = dedup_key(row["text"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return cfg, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_near_dups_found_and_nothing_else(sample_survivors, seed):
    cfg, docs = sample_survivors
    assert len(docs) == 97 + 41 + 38 + 9 + len(SAMPLE_NEAR_DUPS)  # README: clean unique + near dups
    assert local_near_dups(docs, cfg.dedup, seed) == SAMPLE_NEAR_DUPS


def test_exact_groups_keep_their_smallest_doc_id():
    rng = random.Random(5)
    docs = [_doc(f"s/{rng.randint(0, 9999):04d}-{i}", f"text number {rng.randint(0, 60)}") for i in range(300)]
    cfg = DedupConfig()
    table, _ = _buckets(docs, cfg, exact=True)
    pairs = _pairs(bucket_pairs(table.filter(pc.equal(table["kind"], EXACT)), cfg.max_bucket_compare))
    exact, near, _ = resolve(pairs, lambda ids: {}, cfg.threshold)
    want = {}
    for text in {d["text"] for d in docs}:
        group = sorted(d["doc_id"] for d in docs if d["text"] == text)
        want.update({d: group[0] for d in group[1:]})
    assert exact == want and near == {} and len(want) > 200


def test_pairs_do_not_depend_on_the_partitioning(sample_survivors):
    """The bucket shuffle (partition_buckets on any grouping of the document blocks, then
    bucket_pairs per part) gives the same pairs and collision count for any number of parts."""
    cfg, docs = sample_survivors
    bands, rows = lsh_params(cfg.dedup)
    sigs = [doc_signature(d["text"], d["lang"], cfg.dedup, 0) for d in docs]
    rows_with_keys = [{**d, "key": dedup_key(d["text"])} for d in docs]
    block = pa.Table.from_pylist(rows_with_keys, schema=DOC_SCHEMA)
    block = block.append_column(SIG_COLUMN, pa.array(sigs, pa.binary()))

    def summary(blocks, parts):
        pairs, count = set(), 0
        for k in range(parts):
            out = bucket_pairs(
                pa.concat_tables([partition_buckets([b], True, bands, rows, parts)[k] for b in blocks]),
                cfg.dedup.max_bucket_compare,
            )
            pairs.update(_pairs(out))
            count += sum(out["collisions"].to_pylist())
        return pairs, count

    want = summary([block], 1)
    for parts, size in ((2, 7), (3, 50), (7, 1000)):
        blocks = [block.slice(i, size) for i in range(0, block.num_rows, size)]
        assert summary(blocks, parts) == want
    assert len({(a, b) for a, b, k in want[0] if k == BAND}) >= len(SAMPLE_NEAR_DUPS) and want[1] > 0
