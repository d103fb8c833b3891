"""Deduplication on Ray Data: exact (hash of the normalised text) and near (MinHash LSH), in
one narrow shuffle.

**Exact**: documents with the same ``key`` (hash of the normalised text; see filters.py) are
duplicates; the smallest ``doc_id`` stays ``ok``, the others become ``exact_dup``.

**Near** (``dedup.near: true``), over the ``ok`` documents that survive exact dedup:

1. **Shingles.** The text is NFKC-normalised, case-folded and whitespace-collapsed; alphabetic
   text gives word ``ngram``-grams (whitespace words), CJK text (CJK share of letters >= 0.5)
   and code give character ``char_ngram``-grams.
2. **Signatures** (``map_batches``, fused with reading and filtering): the shingles are hashed to
   32 bits in numpy (``shingle_hashes``), then turned into datasketch ``MinHash`` values (affine32
   scheme, ``num_perm`` permutations from ``seed``) computed on the whole array at once; they are
   cut into ``bands`` bands of ``rows`` values, each hashed to a 64-bit bucket key. Bands and rows
   come from datasketch's ``_optimal_param(threshold, num_perm, fp_weight, fn_weight)`` unless set.
   Recall is favoured (weights 0.2 / 0.8) because every candidate pair is verified.
3. **Candidates.** Every ok document gives narrow rows ``(bucket, kind, doc_id)``: one for its
   exact key and one per band. A hash shuffle on plain Ray tasks (``shuffle_pairs``: bucket
   modulo the number of parts) puts each bucket whole into one part; one vectorised pass per part
   turns buckets with several members into pairs
   (exact: each member with the smallest; band: all pairs up to ``max_bucket_compare`` members,
   beyond that each member with the first ``max_bucket_compare`` by doc_id). Only the pairs
   reach the driver. The signatures never travel through the shuffle: the driver fetches them for
   the documents of candidate pairs only (plain tasks over the materialised blocks), and a pair is
   an **edge** when the signatures' estimated Jaccard is >= ``threshold``.
4. **Clusters.** Pairs touching an exact duplicate are left out (exact dedup comes first), then
   union-find gives the connected components; each keeps its smallest doc_id, the others become
   ``near_dup`` ("near duplicate of <doc_id>").

The marks (doc_id -> status, representative) travel to the workers once through the object
store; a ``map_batches`` pass applies them. The set of pairs does not depend on the partitioning,
so neither does the result. The documents are materialised once (they are read twice: for the
buckets and for the marking); only pairs, signatures of candidates and counts reach the driver.

Folding both dedups into one shuffle of ~40-byte rows replaced two sorts of whole documents
and signature-carrying band rows (each 512-byte signature copied once per band). One
difference to running them one after the other: a band bucket of more than ``max_bucket_compare``
members also counts exact duplicates among its first members.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowlm_ray.config import DedupConfig
from knowlm_ray.corpus.schema import DOC_SCHEMA, EXACT_DUP, NEAR_DUP, OK, with_columns
from knowlm_ray.corpus.text import cjk_ratio, normalise_for_dedup
from knowlm_ray.runtime import quiet_busy_cpu_warning

EXACT, BAND = 0, 1  # bucket kinds
BUCKET_SCHEMA = pa.schema([("bucket", pa.int64()), ("kind", pa.int8()), ("doc_id", pa.string())])
# One row per pair (a < b) found in a bucket; plus one row per block with a = b = null carrying
# the number of (band bucket, pair) collisions in that block: a pair sharing k band buckets counts
# k times, which keeps the total independent of the partitioning.
PAIR_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("kind", pa.int8()), ("collisions", pa.int64())])
SIG_COLUMN = "sig"  # signatures ride along with the materialised documents, dropped when marked


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
        items = [norm[i : i + n] for i in range(max(1, len(norm) - n + 1))]
    else:
        ws = norm.split(" ")
        n = ngram
        items = [" ".join(ws[i : i + n]) for i in range(max(1, len(ws) - n + 1))]
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
        units = np.fromiter(
            (cache[w] if w in cache else cache.setdefault(w, _word_hash(w)) for w in ws), dtype=np.uint64, count=len(ws)
        )
        n = ngram
    n = min(n, len(units))
    m = len(units) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + units[k : k + m] + np.uint64(1)
        h = _mix64(h)
    return np.unique((h >> np.uint64(32)).astype(np.uint32))


def _identity(x) -> int:
    return int(x)


class Signer:
    """MinHash signatures with one set of permutations (built once per process)."""

    def __init__(self, num_perm: int, seed: int):
        from datasketch import MinHash

        self.num_perm, self.seed = num_perm, seed
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


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, num_perm) uint32 signatures -> (n, bands) int64 bucket keys: each band's ``rows``
    values folded through a 64-bit mix seeded with the band index, for all documents at once."""
    view = sigs[:, : bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.broadcast_to(_mix64(np.arange(1, bands + 1, dtype=np.uint64) * _MULT), view.shape[:2]).copy()
        for r in range(rows):
            h = _mix64(h * _MULT + view[:, :, r])
    return h.view(np.int64)


_SIGNERS: dict[tuple, Signer] = {}


def _signer(num_perm: int, seed: int) -> Signer:
    key = (num_perm, seed)
    if key not in _SIGNERS:
        _SIGNERS[key] = Signer(*key)
    return _SIGNERS[key]


def doc_signature(text: str, lang: str, cfg: DedupConfig, seed: int) -> bytes | None:
    """Plain core: the MinHash signature's bytes (num_perm uint32), None for text without shingles."""
    hashes = shingle_hashes(text, lang, cfg.ngram, cfg.char_ngram)
    if not len(hashes):
        return None
    return _signer(cfg.num_perm, seed).signature(hashes).tobytes()


def sign_batch(batch: pa.Table, dedup: dict, seed: int) -> pa.Table:
    """map_batches UDF: DOC_SCHEMA batch + the ``sig`` column (null unless ok with shingles)."""
    cfg = DedupConfig.model_validate(dedup)
    status, text, lang = (batch[c].to_pylist() for c in ("status", "text", "lang"))
    sigs = [doc_signature(t, lg, cfg, seed) if st == OK else None for st, t, lg in zip(status, text, lang)]
    return batch.append_column(SIG_COLUMN, pa.array(sigs, pa.binary()))


def key_bucket(key: str) -> int:
    """The exact-dedup key (a hex hash) as a signed 64-bit bucket: its first 64 bits."""
    return int.from_bytes(bytes.fromhex(key[:16]), "little", signed=True)


def bucket_rows(
    doc_ids: Sequence[str],
    keys: Sequence[str | None] | None,
    sigs: Sequence[bytes | None] | None,
    bands: int,
    rows: int,
) -> pa.Table:
    """Plain core: BUCKET_SCHEMA rows: (exact key, EXACT) per document when ``keys`` is given,
    (band key, BAND) per band for each document with a signature when ``sigs`` is given."""
    buckets, kinds, ids = [], [], []
    if keys is not None:
        for doc_id, key in zip(doc_ids, keys):
            if key is not None:
                buckets.append(key_bucket(key))
                ids.append(doc_id)
        kinds = [EXACT] * len(ids)
    tables = [
        pa.table(
            {
                "bucket": pa.array(buckets, pa.int64()),
                "kind": pa.array(kinds, pa.int8()),
                "doc_id": pa.array(ids, pa.string()),
            },
            schema=BUCKET_SCHEMA,
        )
    ]
    if sigs is not None:
        signed = [i for i, sig in enumerate(sigs) if sig is not None]
        if signed:
            mat = np.frombuffer(b"".join(sigs[i] for i in signed), dtype=np.uint32).reshape(len(signed), -1)
            keys_mat = band_keys(mat, bands, rows)  # (docs, bands)
            band_ids = pa.array([doc_ids[i] for i in signed], pa.string()).take(
                pa.array(np.repeat(np.arange(len(signed)), bands))
            )
            tables.append(
                pa.table(
                    {
                        "bucket": pa.array(keys_mat.reshape(-1)),
                        "kind": pa.array(np.full(keys_mat.size, BAND, dtype=np.int8)),
                        "doc_id": band_ids,
                    },
                    schema=BUCKET_SCHEMA,
                )
            )
    return pa.concat_tables(tables)


def bucket_rows_batch(batch: pa.Table, exact: bool, bands: int, rows: int) -> pa.Table:
    """map_batches UDF: documents (+ ``sig`` when near dedup is on) -> BUCKET_SCHEMA rows of the
    ok ones."""
    if not batch.num_rows:  # an empty block may come without columns (a read range with no line)
        return BUCKET_SCHEMA.empty_table()
    ok = batch.filter(pc.equal(batch["status"], OK))
    ids = ok["doc_id"].to_pylist()
    keys = ok["key"].to_pylist() if exact else None
    sigs = ok[SIG_COLUMN].to_pylist() if SIG_COLUMN in ok.column_names else None
    return bucket_rows(ids, keys, sigs, bands, rows)


def bucket_pairs(table: pa.Table, max_compare: int) -> pa.Table:
    """Plain core: BUCKET_SCHEMA rows holding whole buckets -> PAIR_SCHEMA rows (pairs + one
    collision-count row). Exact buckets pair each member with the smallest doc_id; band buckets
    give all pairs among their first ``max_compare`` members and the rest."""
    a: list[str] = []
    b: list[str] = []
    kinds: list[int] = []
    collisions = 0
    n = table.num_rows
    if n > 1:
        t = table.sort_by([("bucket", "ascending"), ("kind", "ascending"), ("doc_id", "ascending")])
        bucket, kind = t["bucket"].to_numpy(), t["kind"].to_numpy()
        starts = np.flatnonzero(np.r_[True, (bucket[1:] != bucket[:-1]) | (kind[1:] != kind[:-1])])
        ends = np.r_[starts[1:], n]
        seen: set[tuple[str, str, int]] = set()  # a pair sharing several band buckets is sent once
        doc_ids = t["doc_id"]
        for g in np.flatnonzero(ends - starts > 1):
            names = list(dict.fromkeys(doc_ids.slice(starts[g], ends[g] - starts[g]).to_pylist()))
            k = int(kind[starts[g]])
            if k == EXACT:
                pairs = [(names[0], x) for x in names[1:]]
            else:
                pairs = []
                for i in range(min(len(names) - 1, max_compare)):
                    collisions += len(names) - 1 - i
                    pairs += [(names[i], y) for y in names[i + 1 :]]
            for x, y in pairs:
                if (x, y, k) not in seen:
                    seen.add((x, y, k))
                    a.append(x)
                    b.append(y)
                    kinds.append(k)
    return pa.table(
        {"a": [*a, None], "b": [*b, None], "kind": [*kinds, None], "collisions": [0] * len(a) + [collisions]},
        schema=PAIR_SCHEMA,
    )


def partition_buckets(blocks: Sequence[pa.Table], exact: bool, bands: int, rows: int, parts: int) -> list[pa.Table]:
    """Map side of the bucket shuffle: documents -> their BUCKET_SCHEMA rows cut into ``parts``
    tables by ``bucket`` modulo ``parts`` (every bucket lands whole in one part)."""
    table = pa.concat_tables([bucket_rows_batch(b, exact, bands, rows) for b in blocks])
    part = table["bucket"].to_numpy() % parts
    return [table.filter(pa.array(part == k)) for k in range(parts)]


def _map_task(exact: bool, bands: int, rows: int, parts: int, *blocks: pa.Table):
    out = partition_buckets(blocks, exact, bands, rows, parts)
    return out[0] if parts == 1 else tuple(out)


def _reduce_task(max_compare: int, *tables: pa.Table) -> pa.Table:
    return bucket_pairs(pa.concat_tables(tables), max_compare)


def shuffle_pairs(block_refs: list, cfg: DedupConfig, bands: int, rows: int, parts: int) -> list[pa.Table]:
    """The bucket shuffle on plain Ray tasks: map tasks over groups of document blocks, one
    reduce task per part turning its buckets into pairs (PAIR_SCHEMA tables, to the driver).

    Not Ray Data's sort: it runs its map and reduce tasks in worker pools of their own (new
    processes, ~1.5 s of start-up each) and starts Ray Data executions twice more; the rows need
    no order, only whole buckets."""
    import ray

    per_task = max(1, -(-len(block_refs) // (4 * parts)))
    groups = [block_refs[i : i + per_task] for i in range(0, len(block_refs), per_task)]
    mapper = ray.remote(num_returns=parts)(_map_task)
    maps = [mapper.remote(cfg.exact, bands, rows, parts, *group) for group in groups]
    if parts == 1:
        maps = [[m] for m in maps]
    reducer = ray.remote(_reduce_task)
    return ray.get([reducer.remote(cfg.max_bucket_compare, *[m[k] for m in maps]) for k in range(parts)])


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


def verify(
    candidates: Sequence[tuple[str, str]], signatures: Callable[[set[str]], dict[str, bytes]], threshold: float
) -> list[tuple[str, str]]:
    """The candidate pairs whose signatures agree in at least ``threshold`` of their values
    (the MinHash estimate of the shingle sets' Jaccard)."""
    if not candidates:
        return []
    sigs = signatures({d for pair in candidates for d in pair})

    def matrix(col: int) -> np.ndarray:
        return np.frombuffer(b"".join(sigs[p[col]] for p in candidates), dtype=np.uint32).reshape(len(candidates), -1)

    estimate = (matrix(0) == matrix(1)).mean(axis=1)
    return [pair for pair, e in zip(candidates, estimate) if e >= threshold]


def resolve(
    pairs: Iterable[tuple[str, str, int]], signatures: Callable[[set[str]], dict[str, bytes]], threshold: float
) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Plain core, on the driver: bucket pairs -> ({exact dup: rep}, {near dup: rep}, counts).
    ``signatures(ids)`` returns the signature bytes of those documents."""
    exact_pairs, candidates = [], set()
    for x, y, kind in pairs:
        if kind == EXACT:
            exact_pairs.append((x, y))
        else:
            candidates.add((x, y))
    exact = connected_components(exact_pairs)
    candidates = sorted((x, y) for x, y in candidates if x not in exact and y not in exact)
    edges = verify(candidates, signatures, threshold)
    near = connected_components(edges)
    return (
        exact,
        near,
        {
            "candidate_pairs": len(candidates),
            "edges": len(edges),
            "clusters": len(set(near.values())),
            "near_dups": len(near),
        },
    )


def mark_duplicates(batch: pa.Table, marks: dict[str, tuple[str, str]]) -> pa.Table:
    """Plain core: DOC_SCHEMA rows (extra columns dropped); ok rows named in ``marks``
    ({doc_id: (status, representative)}) get that status, the reason and an empty text."""
    batch = batch.select(DOC_SCHEMA.names)
    ids = batch["doc_id"].to_pylist()
    hits = [i for i, d in enumerate(ids) if d in marks]
    if not hits:
        return batch
    status, reason, text = (batch[c].to_pylist() for c in ("status", "reason", "text"))
    for i in hits:
        if status[i] == OK:
            status[i], rep = marks[ids[i]]
            what = "duplicate" if status[i] == EXACT_DUP else "near duplicate"
            reason[i], text[i] = f"{what} of {rep}", ""
    return with_columns(
        batch,
        status=pa.array(status, pa.string()),
        reason=pa.array(reason, pa.string()),
        text=pa.array(text, pa.string()),
    )


_MARKS_CACHE: dict[str, dict] = {}


def mark_duplicates_batch(batch: pa.Table, marks_ref: list) -> pa.Table:
    """map_batches UDF: the marks travel once per worker through the object store."""
    import ray

    ref = marks_ref[0]
    key = ref.hex()
    if key not in _MARKS_CACHE:
        _MARKS_CACHE.clear()
        _MARKS_CACHE[key] = ray.get(ref)
    return mark_duplicates(batch, _MARKS_CACHE[key])


def local_near_dups(docs: Sequence[dict[str, Any]], cfg: DedupConfig, seed: int = 0) -> dict[str, str]:
    """The whole near-dedup in one process (tests, benchmarks): {near_dup doc_id: representative}."""
    bands, rows = lsh_params(cfg)
    ok = [d for d in docs if d["status"] == OK]
    sigs = [doc_signature(d["text"], d["lang"], cfg, seed) for d in ok]
    ids = [d["doc_id"] for d in ok]
    pairs = bucket_pairs(bucket_rows(ids, None, sigs, bands, rows), cfg.max_bucket_compare)
    by_id = dict(zip(ids, sigs))
    _, near, _ = resolve(_pair_tuples(pairs), lambda want: {i: by_id[i] for i in want}, cfg.threshold)
    return near


def _pair_tuples(table: pa.Table) -> Iterator[tuple[str, str, int]]:
    for x, y, k in zip(table["a"].to_pylist(), table["b"].to_pylist(), table["kind"].to_pylist()):
        if x is not None:
            yield x, y, k


def _block_signatures(block: pa.Table, ids: pa.Array) -> pa.Table:
    if not block.num_rows:
        return pa.table({"doc_id": pa.array([], pa.string()), SIG_COLUMN: pa.array([], pa.binary())})
    return block.filter(pc.is_in(block["doc_id"], value_set=ids)).select(["doc_id", SIG_COLUMN])


def fetch_signatures(materialized, ids: set[str]) -> dict[str, bytes]:
    """Signatures of ``ids`` from the materialised documents, one task per block; only the
    requested rows reach the driver."""
    import ray

    from knowlm_ray.runtime import map_refs

    ids_ref = ray.put(pa.array(sorted(ids), pa.string()))
    out: dict[str, bytes] = {}
    for part in map_refs(_block_signatures, materialized.to_arrow_refs(), ids_ref):
        out.update(zip(part["doc_id"].to_pylist(), part[SIG_COLUMN].to_pylist()))
    return out


# --------------------------------------------------------------------------- Ray Data
def dedup(docs, cfg: DedupConfig, seed: int, num_partitions: int):
    """Ray Data: DOC_SCHEMA dataset -> (the same rows with exact and near duplicates marked,
    near-dedup stats or {} when near dedup is off). See the module doc."""
    import ray

    if not (cfg.exact or cfg.near):
        return docs, {}
    bands, rows = lsh_params(cfg)
    if cfg.near:
        docs = docs.map_batches(sign_batch, batch_format="pyarrow", fn_kwargs={"dedup": cfg.model_dump(), "seed": seed})
    docs = docs.materialize()
    quiet_busy_cpu_warning()  # from here our own shuffle and write tasks may hold every CPU
    pairs: list[tuple[str, str, int]] = []
    collisions = 0
    for table in shuffle_pairs(docs.to_arrow_refs(), cfg, bands, rows, max(1, num_partitions)):
        pairs += _pair_tuples(table)
        collisions += sum(table["collisions"].to_pylist())
    exact, near, counts = resolve(pairs, lambda ids: fetch_signatures(docs, ids), cfg.threshold)
    marks = {d: (EXACT_DUP, rep) for d, rep in exact.items()}
    marks.update((d, (NEAR_DUP, rep)) for d, rep in near.items())
    marked = docs.map_batches(mark_duplicates_batch, batch_format="pyarrow", fn_kwargs={"marks_ref": [ray.put(marks)]})
    stats = {"bands": bands, "rows": rows, "bucket_pairs": collisions, **counts} if cfg.near else {}
    return marked, stats
