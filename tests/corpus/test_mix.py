"""Per-source caps and shares (corpus/mix.py): plain cores, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from knowlm_ray.config import CorpusConfig, MixConfig
from knowlm_ray.corpus.mix import doc_key, mark_batch, plan, summary_batch
from knowlm_ray.corpus.schema import CAPPED, OK, SAMPLE_SCHEMA, SHORT


def _samples(docs: dict[str, list[int]], source_of) -> pa.Table:
    """SAMPLE_SCHEMA rows: per document its samples' token counts."""
    rows = []
    for doc_id, lengths in docs.items():
        for i, n in enumerate(lengths):
            rows.append(
                dict(
                    doc_id=doc_id,
                    source=source_of(doc_id),
                    file="f",
                    line=1,
                    sample=i,
                    input_ids=[7] * n,
                    n_tokens=n,
                    status=OK if n else SHORT,
                    reason=None,
                    raw=None,
                    sentences_cut=0,
                    tail=False,
                    backfill=0,
                )
            )
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def _summary(table, seed=0, split_at=None):
    parts = [table] if split_at is None else [table.slice(0, split_at), table.slice(split_at)]
    return pa.concat_tables([summary_batch(p, seed) for p in parts])


def test_document_caps_keep_the_smallest_keys_and_grow_monotonically():
    rng = np.random.default_rng(0)
    docs = {f"{s}/{i}": rng.integers(1, 50, rng.integers(1, 4)).tolist() for s in "ab" for i in range(200)}
    table = _samples(docs, lambda d: d.split("/")[0])
    summary = _summary(table, split_at=301)  # a document split over two batches is summed once
    kept = {}
    for cap in (10, 50):
        thresholds, record = plan(summary, MixConfig(caps={"a": cap}))
        marked = mark_batch(table, thresholds, 0, "documents")
        live = {d for d, s in zip(marked["doc_id"].to_pylist(), marked["status"].to_pylist()) if s != CAPPED}
        kept[cap] = {d for d in live if d.startswith("a/")}
        assert len(kept[cap]) == cap and record["sources"]["a"]["documents_after"] == cap
        smallest = sorted((d for d in docs if d.startswith("a/")), key=lambda d: doc_key(0, d))[:cap]
        assert kept[cap] == set(smallest)
        assert {d for d in live if d.startswith("b/")} == {d for d in docs if d.startswith("b/")}  # no cap
        a = record["sources"]["a"]
        assert a["documents_before"] == 200 and a["tokens_after"] == sum(sum(docs[d]) for d in kept[cap])
        capped = marked.filter(pa.compute.equal(marked["status"], CAPPED))
        assert all(len(x) == 0 for x in capped["input_ids"].to_pylist())  # no tokens left behind
    assert kept[10] < kept[50]  # a bigger cap keeps a superset
    other_seed, _ = plan(_summary(table, seed=1), MixConfig(caps={"a": 10}))
    assert other_seed != plan(summary, MixConfig(caps={"a": 10}))[0]


def test_token_caps_and_shares():
    docs = {f"{s}/{i}": [10] for s, n in (("zh", 300), ("en", 100), ("code", 40)) for i in range(n)}
    table = _samples(docs, lambda d: d.split("/")[0])
    _, record = plan(_summary(table), MixConfig(unit="tokens", caps={"zh": 555}))
    assert record["sources"]["zh"]["tokens_after"] == 550 and record["sources"]["zh"]["documents_after"] == 55
    # KnowLM's 5.5 : 1.5 : 0.9: code (40 docs) limits the total; the others are cut to match
    _, record = plan(_summary(table), MixConfig(shares={"zh": 5.5, "en": 1.5, "code": 0.9}))
    after = {s: v["documents_after"] for s, v in record["sources"].items()}
    assert after["code"] == 40 and after["zh"] == int(40 / 0.9 * 5.5) and after["en"] == int(40 / 0.9 * 1.5)


def test_mix_config_errors_name_the_key():
    base = {
        "inputs": [{"path": "x", "source": "zh", "lang": "zh"}, {"path": "y", "source": "en", "lang": "en"}],
        "tokenizer": "t",
    }
    with pytest.raises(ValueError, match=r"mix.caps names source\(s\) \['fr'\]"):
        CorpusConfig.model_validate({**base, "mix": {"caps": {"fr": 3}}})
    with pytest.raises(ValueError, match=r"mix.shares has no share for source\(s\) \['en'\]"):
        CorpusConfig.model_validate({**base, "mix": {"shares": {"zh": 1}}})
    with pytest.raises(ValueError, match="mix.caps must be >= 0"):
        MixConfig(caps={"zh": -1})
    assert not CorpusConfig.model_validate(base).mix.active
