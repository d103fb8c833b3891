"""Deduplication on Ray Data: exact (hash of the normalised text) and near (MinHash LSH).

Exact: rows are grouped by ``key`` (non-ok rows carry a unique key, so they pass through
alone) with a sort shuffle; in each group the row with the smallest ``doc_id`` stays ``ok`` and
the others become ``exact_dup``. Which copy survives therefore does not depend on partitioning
or task order.

Near (``dedup.near: true``), after exact dedup, over the ``ok`` documents:

1. **Shingles.** The text is NFKC-normalised, case-folded and whitespace-collapsed; alphabetic
   text gives word ``ngram``-grams (whitespace words), CJK text (CJK share of letters >= 0.5)
   and code give character ``char_ngram``-grams.
2. **Signatures** (``map_batches``): the shingles are hashed to 32 bits in numpy
   (``shingle_hashes``: a vectorised rolling hash instead of one SHA-1 call per shingle string),
   then fed to a datasketch ``MinHash`` (affine32 scheme, ``num_perm`` permutations from ``seed``,
   identity ``hashfunc``) per document, frozen as a ``LeanMinHash``; its hash values are cut
   into ``bands`` bands of ``rows`` values, each hashed to a 64-bit bucket key. Bands and rows come
   from datasketch's ``_optimal_param(threshold, num_perm, fp_weight, fn_weight)`` unless set.
   Recall is favoured (weights 0.2 / 0.8) because every candidate pair is verified next.
3. **Candidates** (a range-partitioned sort on the bucket key, one partition per block -- what
   ``groupby().map_groups`` does under Ray's sort shuffle, but one Python call per block rather than
   per bucket, since nearly all buckets hold one document): documents sharing a bucket are
   candidate pairs (all pairs up to ``max_bucket_compare`` members; beyond that each member is
   compared with the first ``max_bucket_compare`` by doc_id). A pair is an **edge** when the
   signatures' estimated Jaccard is >= ``threshold``.
4. **Clusters.** Only the edges (pairs of doc_ids) reach the driver: union-find gives the
   connected components; each keeps its smallest doc_id, the others become ``near_dup``
   ("near duplicate of <doc_id>"). The set of edges does not depend on partitioning, so neither
   does the result.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from knowlm_ray.config import DedupConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, EXACT_DUP, NEAR_DUP, OK
from knowlm_ray.corpus.text import cjk_ratio, normalise_for_dedup

BAND_SCHEMA = pa.schema([("band", pa.int64()), ("doc_id", pa.string()), ("sig", pa.binary())])
# One row per verified edge (a < b); plus one row per block with a = b = null carrying the
# number of (bucket, pair) collisions in that block: a pair sharing k buckets counts k times,
# which keeps the total independent of the partitioning.
EDGE_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("jaccard", pa.float32()),
                         ("candidates", pa.int64())])


# --------------------------------------------------------------------------- exact
def keep_first(group: pa.Table) -> pa.Table:
    """map_groups UDF (plain Python): one key group -> the same rows, duplicates marked."""
    if group.num_rows <= 1:
        return group
    group = group.sort_by([("doc_id", "ascending")])
    rows = group.to_pylist()
    first = rows[0]["doc_id"]
    for row in rows[1:]:
        if row["status"] == OK:
            row.update(status=EXACT_DUP, reason=f"duplicate of {first}", text="")
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def mark_exact_block(block: pa.Table) -> pa.Table:
    """Block-wise UDF after a sort on ``key`` (every key group lies whole in one block): in each
    group the smallest doc_id stays, the other ok rows become ``exact_dup``. Same result as
    ``keep_first`` per group, without one Python call per group (nearly all groups are single)."""
    n = block.num_rows
    if n < 2:
        return block
    t = block.sort_by([("key", "ascending"), ("doc_id", "ascending")])
    keys = t["key"].to_numpy(zero_copy_only=False)
    new_group = np.r_[True, keys[1:] != keys[:-1]]
    if new_group.all():
        return t
    doc_ids = t["doc_id"].to_pylist()
    rep_index = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    status = t["status"].to_pylist()
    reason, text = t["reason"].to_pylist(), t["text"].to_pylist()
    for i in np.flatnonzero(~new_group):
        if status[i] == OK:
            status[i], reason[i], text[i] = EXACT_DUP, f"duplicate of {doc_ids[rep_index[i]]}", ""
    t = t.set_column(t.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
    return t.set_column(t.schema.get_field_index("text"), "text", pa.array(text, pa.string()))


def exact_dedup(ds, num_partitions: int):
    """Ray Data: a range-partitioned sort on ``key`` puts every key group whole into one block
    (``num_partitions`` blocks), then one vectorised pass per block marks the duplicates. A sort
    shuffle runs on plain tasks; Ray's hash-shuffle ``groupby`` starts aggregator actors, which
    costs seconds per shuffle on a small cluster. The sorted blocks are then cut back into blocks
    of ``BATCH_ROWS`` rows (a streaming split, no copy): the sort leaves ``num_partitions`` blocks of
    unequal size, and the heavy stages after it (signatures, tokenising) run one task per block, so
    with 2 blocks on 2 CPUs the bigger block alone set their wall time."""
    from knowlm_ray.corpus.sources import BATCH_ROWS

    return ds.repartition(num_partitions).sort("key").map_batches(
        mark_exact_block, batch_size=None, batch_format="pyarrow").repartition(target_num_rows_per_block=BATCH_ROWS)


# --------------------------------------------------------------------------- near: plain cores
def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows): as configured, or datasketch's optimum for the threshold."""
    if cfg.bands:
        return cfg.bands, cfg.rows
    return _optimal(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


@functools.lru_cache(maxsize=16)
def _optimal(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, fp_weight, fn_weight)
    return int(bands), int(rows)


def shingle_mode(text: str, lang: str) -> str:
    return "char" if lang == "code" or cjk_ratio(text) >= 0.5 else "word"


def shingles(text: str, lang: str, ngram: int = 5, char_ngram: int = 5) -> set[bytes]:
    """The shingle set MinHash sees (see the module doc); empty only for empty text."""
    norm = normalise_for_dedup(text)
    if not norm:
        return set()
    if shingle_mode(norm, lang) == "char":
        n = char_ngram
        items = [norm[i:i + n] for i in range(max(1, len(norm) - n + 1))]
    else:
        ws = norm.split(" ")
        n = ngram
        items = [" ".join(ws[i:i + n]) for i in range(max(1, len(ws) - n + 1))]
    return {s.encode("utf-8") for s in items}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


_MULT = np.uint64(0x9E3779B97F4A7C15)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def shingle_hashes(text: str, lang: str, ngram: int = 5, char_ngram: int = 5) -> np.ndarray:
    """32-bit hashes of the shingles of ``shingles()`` (same shingles, same count up to hash
    collisions), computed vectorised: a polynomial rolling hash over the code points (character
    n-grams) or over 64-bit word hashes (word n-grams), then a 64-bit mix. Platform independent."""
    norm = normalise_for_dedup(text)
    if not norm:
        return np.zeros(0, dtype=np.uint32)
    if shingle_mode(norm, lang) == "char":
        units = np.frombuffer(norm.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
        n = char_ngram
    else:
        cache: dict[str, int] = {}
        ws = norm.split(" ")
        units = np.fromiter((cache[w] if w in cache else cache.setdefault(w, _word_hash(w)) for w in ws),
                            dtype=np.uint64, count=len(ws))
        n = ngram
    n = min(n, len(units))
    m = len(units) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + units[k:k + m] + np.uint64(1)
        h = _mix64(h)
    return np.unique((h >> np.uint64(32)).astype(np.uint32))


def _identity(x) -> int:
    return int(x)


class Signer:
    """MinHash signatures with one set of permutations (built once per process)."""

    def __init__(self, num_perm: int, seed: int, bands: int, rows: int):
        from datasketch import MinHash

        self.num_perm, self.seed, self.bands, self.rows = num_perm, seed, bands, rows
        # the shingles arrive already hashed to 32 bits (shingle_hashes): identity hash function
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32")

    def signature(self, hashes: Iterable[int]) -> np.ndarray:
        """Signature of a shingle set given as 32-bit hashes (``shingle_hashes``): the values of
        datasketch's ``MinHash.update_batch`` (affine32: MurmurHash3 pre-mix, then ``a * h + b``
        per permutation, minimum), computed on the whole array instead of calling the identity
        hash function once per shingle in Python."""
        from datasketch.minhash import _SCHEME_WIDTHS, _fmix

        t = self._template
        hv = np.asarray(hashes, dtype=t.hashvalues.dtype).reshape(-1, 1)
        if not len(hv):
            return np.asarray(t.hashvalues, dtype=np.uint32)
        a, b = t.permutations
        with np.errstate(over="ignore"):
            phv = _fmix(hv, _SCHEME_WIDTHS[t.scheme]) * a + b
        return np.minimum(t.hashvalues, phv.min(axis=0)).astype(np.uint32)

    def band_keys(self, sig: np.ndarray) -> list[int]:
        """One signed 64-bit bucket key per band (band index included in the hash)."""
        keys = []
        for i in range(self.bands):
            h = hashlib.blake2b(sig[i * self.rows:(i + 1) * self.rows].tobytes(), digest_size=8,
                                person=struct.pack("<I", i).ljust(16, b"\0"))
            keys.append(int.from_bytes(h.digest(), "little", signed=True))
        return keys


_SIGNERS: dict[tuple, Signer] = {}


def _signer(num_perm: int, seed: int, bands: int, rows: int) -> Signer:
    key = (num_perm, seed, bands, rows)
    if key not in _SIGNERS:
        _SIGNERS[key] = Signer(*key)
    return _SIGNERS[key]


def band_rows(docs: Iterable[dict[str, Any]], cfg: DedupConfig, seed: int,
              bands: int | None = None, rows: int | None = None) -> dict[str, list]:
    """Plain core: ok documents -> columns of BAND_SCHEMA (one row per document and band)."""
    if bands is None or rows is None:
        bands, rows = lsh_params(cfg)
    signer = _signer(cfg.num_perm, seed, bands, rows)
    out: dict[str, list] = {"band": [], "doc_id": [], "sig": []}
    for doc in docs:
        if doc["status"] != OK:
            continue
        hashes = shingle_hashes(doc["text"], doc["lang"], cfg.ngram, cfg.char_ngram)
        if not len(hashes):
            continue
        sig = signer.signature(hashes)
        raw = sig.tobytes()
        for key in signer.band_keys(sig):
            out["band"].append(key)
            out["doc_id"].append(doc["doc_id"])
            out["sig"].append(raw)
    return out


def band_rows_batch(batch: pa.Table, dedup: dict, seed: int, bands: int, rows: int) -> pa.Table:
    """map_batches UDF: DOC_SCHEMA batch -> BAND_SCHEMA rows (bands/rows fixed on the driver)."""
    cfg = DedupConfig.model_validate(dedup)
    cols = band_rows(batch.select(["doc_id", "lang", "text", "status"]).to_pylist(), cfg, seed, bands, rows)
    return pa.table(cols, schema=BAND_SCHEMA)


def bucket_edges(table: pa.Table, threshold: float, max_compare: int) -> pa.Table:
    """Plain core: BAND_SCHEMA rows (whole buckets) -> EDGE_SCHEMA rows (verified pairs + one
    candidate-count row)."""
    out: dict[str, list] = {"a": [], "b": [], "jaccard": [], "candidates": []}
    candidates = 0
    if table.num_rows > 1:
        bands = table["band"].to_numpy()
        order = np.argsort(bands, kind="stable")
        sorted_bands = bands[order]
        starts = np.flatnonzero(np.r_[True, sorted_bands[1:] != sorted_bands[:-1]])
        ends = np.r_[starts[1:], len(sorted_bands)]
        multi = np.flatnonzero(ends - starts > 1)
        done: set[tuple[str, str]] = set()  # a pair sharing several buckets is compared once here
        if len(multi):
            doc_ids = table["doc_id"]
            sigs = table["sig"]
            for g in multi:
                idx = order[starts[g]:ends[g]]
                members = sorted({doc_ids[int(i)].as_py(): sigs[int(i)].as_py() for i in idx}.items())
                if len(members) < 2:
                    continue
                names = [m[0] for m in members]
                mat = np.stack([np.frombuffer(m[1], dtype=np.uint32) for m in members])
                for i in range(min(len(names) - 1, max_compare)):
                    candidates += len(names) - 1 - i
                    js = [j for j in range(i + 1, len(names)) if (names[i], names[j]) not in done]
                    if not js:
                        continue
                    done.update((names[i], names[j]) for j in js)
                    est = (mat[js] == mat[i]).mean(axis=1)
                    for j, e in zip(js, est):
                        if e >= threshold:
                            out["a"].append(names[i])
                            out["b"].append(names[j])
                            out["jaccard"].append(float(e))
                            out["candidates"].append(0)
    out["a"].append(None)
    out["b"].append(None)
    out["jaccard"].append(None)
    out["candidates"].append(candidates)
    return pa.table(out, schema=EDGE_SCHEMA)


def edges_batch(batch: pa.Table, threshold: float, max_compare: int) -> pa.Table:
    """map_batches UDF (batch_size=None after a hash repartition on ``band``)."""
    return bucket_edges(batch, threshold, max_compare)


def connected_components(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over the edges -> {doc_id: representative} for every non-representative member;
    the representative of a component is its smallest doc_id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            parent[rb] = ra  # the smaller id is the root, so a root is its component's minimum
    return {x: find(x) for x in parent if find(x) != x}


def mark_near_dups(batch: pa.Table, dups: dict[str, str]) -> pa.Table:
    """Plain core: ok rows whose doc_id is in ``dups`` become near_dup rows."""
    if not dups:
        return batch
    ids = batch["doc_id"].to_pylist()
    if not any(i in dups for i in ids):
        return batch
    rows = batch.to_pylist()
    for row in rows:
        rep = dups.get(row["doc_id"])
        if rep is not None and row["status"] == OK:
            row.update(status=NEAR_DUP, reason=f"near duplicate of {rep}", text="")
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


_DUPS_CACHE: dict[str, dict[str, str]] = {}


def mark_near_dups_batch(batch: pa.Table, dups_ref: list) -> pa.Table:
    """map_batches UDF: the {doc_id: rep} map travels once per worker through the object store."""
    import ray

    ref = dups_ref[0]
    key = ref.hex()
    if key not in _DUPS_CACHE:
        _DUPS_CACHE.clear()
        _DUPS_CACHE[key] = ray.get(ref)
    return mark_near_dups(batch, _DUPS_CACHE[key])


def local_near_dups(docs: Sequence[dict[str, Any]], cfg: DedupConfig, seed: int = 0) -> dict[str, str]:
    """The whole near-dedup in one process (tests, benchmarks): {near_dup doc_id: representative}."""
    table = pa.table(band_rows(docs, cfg, seed), schema=BAND_SCHEMA)
    edges = bucket_edges(table, cfg.threshold, cfg.max_bucket_compare)
    pairs = [(a, b) for a, b in zip(edges["a"].to_pylist(), edges["b"].to_pylist()) if a is not None]
    return connected_components(pairs)


# --------------------------------------------------------------------------- near: Ray Data
def near_dedup(docs, cfg: DedupConfig, seed: int, num_partitions: int = 0):
    """Ray Data: DOC_SCHEMA dataset -> (the same rows with near duplicates marked, stats).

    ``docs`` is materialised once (in the object store) because it is read twice: for the
    signatures and for the marking. Only edges and counts come to the driver.
    """
    import ray

    docs = docs.materialize()
    bands, rows = lsh_params(cfg)
    edges_ds = (docs.map_batches(band_rows_batch, batch_format="pyarrow",
                                 fn_kwargs={"dedup": cfg.model_dump(), "seed": seed, "bands": bands, "rows": rows})
                .repartition(max(1, num_partitions))  # the sort makes one partition per input block
                .sort("band")
                .map_batches(edges_batch, batch_size=None, batch_format="pyarrow",
                             fn_kwargs={"threshold": cfg.threshold, "max_compare": cfg.max_bucket_compare}))
    edges: set[tuple[str, str]] = set()
    candidates = 0
    for batch in edges_ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for a, b, n in zip(batch["a"].to_pylist(), batch["b"].to_pylist(), batch["candidates"].to_pylist()):
            if a is None:
                candidates += n
            else:
                edges.add((a, b))
    dups = connected_components(sorted(edges))
    stats = {"bands": bands, "rows": rows, "bucket_pairs": candidates, "edges": len(edges),
             "clusters": len(set(dups.values())), "near_dups": len(dups)}
    if not dups:
        return docs, stats
    marked = docs.map_batches(mark_near_dups_batch, batch_format="pyarrow",
                              fn_kwargs={"dups_ref": [ray.put(dups)]})
    return marked, stats
