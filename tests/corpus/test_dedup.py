"""MinHash LSH near-dedup cores (plain Python, no Ray) and data/sample's planted near duplicates."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from knowlm_ray.config import ConfigError, CorpusConfig, DedupConfig, load_config
from knowlm_ray.corpus.dedup import (BAND_SCHEMA, Signer, band_rows, bucket_edges, connected_components, jaccard,
                                     local_near_dups, lsh_params, mark_near_dups, shingle_hashes, shingle_mode,
                                     shingles)
from knowlm_ray.corpus.filters import dedup_key, filter_reason, load_blocklist
from knowlm_ray.corpus.schema import DOC_SCHEMA, NEAR_DUP, OK

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


@pytest.mark.parametrize("text,lang", [
    ("The quick brown fox jumps over the lazy dog again and again and again", "en"),
    ("知识图谱是一种结构化的语义知识库，用于描述物理世界中的概念及其相互关系。", "zh"),
    ("def f(x):\n    return x + 1\n", "code"), ("short", "en"), ("", "zh")])
def test_shingle_hashes_match_the_shingles(text, lang):
    hashes = shingle_hashes(text, lang)
    assert hashes.dtype == np.uint32 and len(hashes) == len(shingles(text, lang)) == len(set(hashes.tolist()))
    assert np.array_equal(shingle_hashes(text, lang), hashes)


def test_signatures_are_datasketch_minhash_and_deterministic():
    items = shingle_hashes("The quick brown fox jumps over the lazy dog again and again", "en")
    signer = Signer(128, seed=3, bands=12, rows=10)
    sig = signer.signature(items)
    ref = MinHash(num_perm=128, seed=3, hashfunc=int)
    ref.update_batch(items.tolist())
    assert sig.dtype == np.uint32 and np.array_equal(sig, ref.hashvalues)
    assert np.array_equal(Signer(128, 3, 12, 10).signature(items), sig)
    assert not np.array_equal(Signer(128, 4, 12, 10).signature(items), sig)
    keys = signer.band_keys(sig)
    assert len(keys) == 12 and len(set(keys)) == 12  # the band index is part of the key


def _doc(doc_id, text, lang="en", status=OK):
    return {"doc_id": doc_id, "source": "s", "lang": lang, "file": "f", "line": 1, "text": text,
            "status": status, "reason": None, "raw": None, "key": None}


BASE = ("Tides are the rise and fall of sea levels caused by the combined effects of the gravitational "
        "forces exerted by the Moon and the Sun and the rotation of the Earth. Most places have two high "
        "tides and two low tides every lunar day, and the tidal range varies from place to place. Some "
        "places, for example parts of the Gulf of Mexico, have only one high tide a day. The largest tidal "
        "ranges in the world occur in the Bay of Fundy in Canada, where the difference between high and low "
        "water can exceed sixteen metres during spring tides, which follow the new and the full moon.")


def _edit(text, rng, n):
    words = text.split()
    for _ in range(n):
        words[rng.randrange(len(words))] = rng.choice(["sea", "ocean", "water", "coast"])
    return " ".join(words)


def test_bucket_edges_verifies_and_connected_components_pick_smallest_id():
    rng = random.Random(0)
    docs = [_doc("d/3", BASE), _doc("d/1", _edit(BASE, rng, 1)), _doc("d/2", _edit(BASE, rng, 1)),
            _doc("d/9", "An unrelated document about bread, flour, water, salt and yeast, baked in an oven."),
            _doc("d/5", BASE, status="filtered")]  # not ok: never signed
    cfg = DedupConfig(near=True)
    table = pa.table(band_rows(docs, cfg, seed=0), schema=BAND_SCHEMA)
    assert table.num_rows == 4 * 12 and "d/5" not in table["doc_id"].to_pylist()
    edges = bucket_edges(table, cfg.threshold, cfg.max_bucket_compare).to_pylist()
    summary = [e for e in edges if e["a"] is None]
    pairs = {(e["a"], e["b"]) for e in edges if e["a"] is not None}
    assert len(summary) == 1 and summary[0]["candidates"] >= len(edges) - 1
    assert pairs <= {("d/1", "d/2"), ("d/1", "d/3"), ("d/2", "d/3")} and len(pairs) >= 2
    assert all(e["jaccard"] >= 0.8 for e in edges if e["a"] is not None)
    assert local_near_dups(docs, cfg) == {"d/2": "d/1", "d/3": "d/1"}
    assert bucket_edges(table, 1.01, 64).num_rows == 1  # nothing verified above 1


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
    table = pa.table(band_rows(docs, cfg, seed=0), schema=BAND_SCHEMA)
    edges = bucket_edges(table, cfg.threshold, cfg.max_bucket_compare)
    assert edges.num_rows - 1 == 39 + 38 + 37  # bounded work: 3 members compared, each pair once
    assert edges["candidates"][-1].as_py() == 12 * (39 + 38 + 37)  # (bucket, pair) collisions
    assert local_near_dups(docs, cfg) == {f"d/{i:03d}": "d/000" for i in range(1, 40)}


def test_mark_near_dups_only_touches_listed_ok_rows():
    batch = pa.Table.from_pylist([_doc("a", "x"), _doc("b", "y"), _doc("c", "z", status="exact_dup")], schema=DOC_SCHEMA)
    out = mark_near_dups(batch, {"b": "a", "c": "a"}).to_pylist()
    assert [(r["status"], r["reason"]) for r in out] == [(OK, None), (NEAR_DUP, "near duplicate of a"),
                                                         ("exact_dup", None)]
    assert out[1]["text"] == "" and mark_near_dups(batch, {}) is batch


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


def test_mark_exact_block_equals_keep_first_per_group():
    from knowlm_ray.corpus.dedup import keep_first, mark_exact_block

    rng = random.Random(5)
    rows = []
    for i in range(300):
        status = OK if rng.random() < 0.8 else "filtered"
        key = f"k{rng.randint(0, 60)}" if status == OK else f"~s/{i:04d}"
        rows.append({**_doc(f"s/{rng.randint(0, 9999):04d}-{i}", f"text {key}", status=status), "key": key})
    table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
    got = {r["doc_id"]: (r["status"], r["reason"], r["text"]) for r in mark_exact_block(table).to_pylist()}
    want = {}
    for key in {r["key"] for r in rows}:
        group = pa.Table.from_pylist([r for r in rows if r["key"] == key], schema=DOC_SCHEMA)
        want.update({r["doc_id"]: (r["status"], r["reason"], r["text"]) for r in keep_first(group).to_pylist()})
    assert got == want and sum(v[0] == "exact_dup" for v in got.values()) > 100


def test_edges_do_not_depend_on_the_partitioning(sample_survivors):
    """What the Ray sort shuffle does: band rows range-partitioned on the bucket key, bucket_edges
    per partition. Any partitioning gives the same edges and the same collision count."""
    cfg, docs = sample_survivors
    table = pa.table(band_rows(docs, cfg.dedup, 0), schema=BAND_SCHEMA).sort_by("band")

    def summary(tables):
        edges, count = set(), 0
        for t in tables:
            for row in bucket_edges(t, cfg.dedup.threshold, cfg.dedup.max_bucket_compare).to_pylist():
                if row["a"] is None:
                    count += row["candidates"]
                else:
                    edges.add((row["a"], row["b"]))
        return edges, count

    want = summary([table])
    bands = table["band"].to_numpy()
    for k in (2, 3, 7):
        cuts = [0] + [int(np.searchsorted(bands, b, side="left")) for b in np.quantile(bands, np.arange(1, k) / k)]
        cuts.append(len(bands))
        assert summary([table.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]) == want
    assert len(want[0]) == len(SAMPLE_NEAR_DUPS) and want[1] > 0
