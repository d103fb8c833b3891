"""Exact and ROUGE-L near-duplicate removal of instructions (plain cores; the pipeline runs the
per-record parts in Ray Data and the pair work in Ray tasks).

**ROUGE-L.** EasyInstruct's RougeSelector (as self-instruct) keeps a record unless its ROUGE-L F1
with an already kept record is above the threshold, comparing each new record with every kept
one: n^2 / 2 comparisons. Here only MinHash LSH candidate pairs are compared:

1. Tokens: script-aware words, case-folded (``knowlm_ray.corpus.text.words``: one token per CJK
   character, runs of letters / digits otherwise), so Chinese gets character-level ROUGE-L, as
   Chinese ROUGE is usually computed. rouge-score (what EasyInstruct and self-instruct call) keeps
   only ``[a-z0-9]`` by default, which turns a Chinese instruction into nothing. ROUGE-L here is
   its own LCS (``rouge_l``): the tests check it against rouge-score given the same tokenizer;
   rouge-score itself imports nltk (and scipy), seconds in every Ray worker that scores pairs.
2. Candidates: ROUGE-L F1 = 2 LCS / (|a| + |b|) >= t needs at least t (|a| + |b|) / 2 shared
   tokens, i.e. a token-set Jaccard of roughly t / (2 - t) (0.54 for 0.7). The token *sets* get
   MinHash signatures and LSH band keys from the corpus dedup machinery
   (``knowlm_ray.corpus.dedup``: ``Signer``, ``band_keys``, datasketch's optimal bands and rows
   for ``lsh_threshold``, recall-weighted); records sharing a band bucket are candidate pairs.
3. Every candidate pair (earlier, later) gets its exact ROUGE-L F1; a pair above the threshold is
   an edge. In input order, a record is dropped when an edge joins it to an earlier record that is
   still kept: EasyInstruct's greedy rule, restricted to the candidates.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from knowlm_ray.config import DedupConfig
from knowlm_ray.corpus.dedup import Signer, band_keys, lsh_params
from knowlm_ray.corpus.text import words
from knowlm_ray.curate.config import RougeDedup


def rouge_tokens(text: str) -> list[str]:
    return [w.casefold() for w in words(text)]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (the dynamic programme rouge-score runs, one row
    at a time)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else (prev[j + 1] if prev[j + 1] > cur[j] else cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_tokens(a: Sequence, b: Sequence) -> float:
    """ROUGE-L F1 of two token sequences: 2 LCS / (|a| + |b|) (rouge-score's fmeasure: the
    harmonic mean of LCS / |a| and LCS / |b|)."""
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts over script-aware tokens."""
    return rouge_l_tokens(rouge_tokens(a), rouge_tokens(b))


def dedup_params(cfg: RougeDedup) -> tuple[int, int]:
    """(bands, rows) of the LSH."""
    return lsh_params(
        DedupConfig(near=True, threshold=cfg.lsh_threshold, num_perm=cfg.num_perm, bands=cfg.bands, rows=cfg.rows)
    )


def _token_hashes(tokens: Iterable[str]) -> np.ndarray:
    return np.unique(
        np.fromiter(
            (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=4).digest(), "little") for t in set(tokens)),
            dtype=np.uint32,
        )
    )


@functools.lru_cache(maxsize=4)
def _signer(num_perm: int, seed: int) -> Signer:
    return Signer(num_perm, seed)


def bucket_keys(texts: Sequence[str], cfg: RougeDedup, seed: int) -> np.ndarray:
    """(n, bands) int64 LSH bucket keys of the texts' token sets (a text without tokens gets
    keys of its own: it never collides)."""
    bands, rows = dedup_params(cfg)
    signer = _signer(cfg.num_perm, seed)
    sigs = np.stack([signer.signature(_token_hashes(rouge_tokens(t))) for t in texts]) if texts else None
    if sigs is None:
        return np.zeros((0, bands), dtype=np.int64)
    keys = band_keys(sigs, bands, rows)
    return keys


def candidate_pairs(uids: np.ndarray, keys: np.ndarray, max_compare: int) -> set[tuple[int, int]]:
    """Pairs ``(earlier uid, later uid)`` sharing a band bucket; a bucket of more than
    ``max_compare`` members pairs each with its first ``max_compare`` only."""
    if not len(uids):
        return set()
    bands = keys.shape[1]
    t = pa.table(
        {
            "bucket": pa.array(keys.reshape(-1)),
            "band": pa.array(np.tile(np.arange(bands, dtype=np.int32), len(uids))),
            "uid": pa.array(np.repeat(uids, bands)),
        }
    ).sort_by([("band", "ascending"), ("bucket", "ascending"), ("uid", "ascending")])
    bucket, band, uid = (t[c].to_numpy() for c in ("bucket", "band", "uid"))
    n = len(uid)
    starts = np.flatnonzero(np.r_[True, (bucket[1:] != bucket[:-1]) | (band[1:] != band[:-1])])
    ends = np.r_[starts[1:], n]
    pairs: set[tuple[int, int]] = set()
    for g in np.flatnonzero(ends - starts > 1):
        members = uid[starts[g] : ends[g]].tolist()
        for i in range(min(len(members) - 1, max_compare)):
            a = members[i]
            pairs.update((a, b) for b in members[i + 1 :] if a != b)
    return pairs


def score_pairs(
    pairs: Sequence[tuple[int, int]], texts: dict[int, str], threshold: float
) -> list[tuple[int, int, float]]:
    """The pairs whose ROUGE-L F1 is above ``threshold``, with it. Each text is tokenised once;
    a pair whose shared tokens (multiset intersection, an upper bound of the LCS) cannot reach the
    threshold skips the LCS: same result, less work."""
    toks = {u: rouge_tokens(t) for u, t in texts.items()}
    bags = {u: Counter(t) for u, t in toks.items()}
    out = []
    for a, b in pairs:
        ta, tb = toks[a], toks[b]
        n = len(ta) + len(tb)
        if not n or 2 * sum((bags[a] & bags[b]).values()) <= threshold * n:
            continue
        r = rouge_l_tokens(ta, tb)
        if r > threshold:
            out.append((a, b, r))
    return out


def greedy_drops(edges: Iterable[tuple[int, int, float]]) -> dict[int, tuple[int, float]]:
    """``later uid -> (earlier kept uid, ROUGE-L)``: in uid order, a record joined by an edge to
    an earlier record that is kept is dropped (the first such earlier record in uid order names it)."""
    by_later: dict[int, list[tuple[int, float]]] = {}
    for a, b, r in edges:
        by_later.setdefault(b, []).append((a, r))
    dropped: dict[int, tuple[int, float]] = {}
    for b in sorted(by_later):
        for a, r in sorted(by_later[b]):
            if a not in dropped:
                dropped[b] = (a, r)
                break
    return dropped
