"""Training batches: memory-mapped Arrow shards (or tokenized records), resumable rank samplers,
and right-padding collation (with per-document positions for packed rows).

``RankSampler`` is KnowLM's ``MyDistributedSampler`` without ratio mixing: every epoch is a
permutation seeded by (seed, epoch); each micro-step takes the next ``micro_batch * world_size``
indices of that stream and rank r keeps slice r. Its whole state is (epoch, offset), saved in
every checkpoint, so a resumed run continues at the exact sample it stopped before.

``MixedSampler`` adds per-source mixing (KnowLM's ``--global_batch_distributed`` ratio sampling,
as probabilities): the source of the g-th sample is a seeded draw, and each source walks its own
seeded permutation epoch by epoch (small sources repeat, big ones are cut). Its state is the
global sample count plus every source's (epoch, offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from knowlm_ray.errors import UserError

IGNORE_INDEX = -100
Row = tuple[np.ndarray, "np.ndarray | None"]  # (input_ids, labels or None = learn every token)


class DataError(UserError, ValueError):
    """Training data that cannot be used; the message names the path."""


class Rows(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Row: ...


# --------------------------------------------------------------------------- shards
def find_shards(path: str | Path) -> list[Path]:
    """``part-*.arrow`` files of a corpus out_dir (``DIR/shards/``), of prepared instruction data
    (``DIR/train/``) or of the shards dir itself."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"training data not found: {p}")
    for d in (p / "shards", p / "train", p):
        files = sorted(d.glob("part-*.arrow")) or sorted(d.glob("*.arrow"))
        if files:
            return files
    raise DataError(f"no Arrow shards (part-*.arrow) in {p}, {p / 'shards'} or {p / 'train'}")


def find_validation_shards(path: str | Path) -> list[Path]:
    """``DIR/validation/part-*.arrow`` of prepared instruction data; [] when there are none."""
    d = Path(path) / "validation"
    return sorted(d.glob("part-*.arrow")) or sorted(d.glob("*.arrow")) if d.is_dir() else []


def read_manifest(path: str | Path) -> dict:
    """``DIR/manifest.json`` of a corpus / instruction out_dir ({} when there is none)."""
    import json

    p = Path(path)
    for f in (p / "manifest.json", p.parent / "manifest.json"):
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DataError(f"{f}: not valid JSON ({exc})") from None
    return {}


class ShardRows:
    """Training rows of Arrow IPC *file* shards, on ``knowlm_ray.corpus.shards.ShardReader``
    (memory-mapped, random access; pages load on demand).

    Required column ``input_ids: list<int>``; an optional ``labels`` column of the same shape is
    used as is (prepared instruction shards). Rows shorter than 2 tokens teach nothing (no next
    token) and would make an all-padding batch's loss NaN, so they are skipped: row ``i`` here is
    shard row ``keep[i]``.
    """

    def __init__(self, files: Sequence[str | Path]):
        from knowlm_ray.corpus.shards import ShardError, ShardReader

        try:
            self.reader = ShardReader(files)
        except ShardError as exc:
            raise DataError(str(exc)) from None
        self._keep = np.flatnonzero(self.reader.lengths() >= 2)
        self.packed = self.reader.packed  # shards carry doc_starts (corpus pack.mode: greedy)
        self._sources: tuple[list[str], np.ndarray] | None = None
        if len(self._keep) == 0:
            names = [str(f) for f in files][:3]
            raise DataError(f"no usable rows (>= 2 tokens) in {len(files)} shard file(s): {names}")

    def __len__(self) -> int:
        return len(self._keep)

    def _row(self, i: int) -> int:
        if not 0 <= i < len(self._keep):
            raise IndexError(f"row {i} outside 0..{len(self._keep) - 1}")
        return int(self._keep[i])

    def __getitem__(self, i: int) -> Row:
        r = self._row(i)
        return self.reader.input_ids(r), self.reader.labels(r)

    def doc_starts(self, i: int) -> np.ndarray | None:
        """Offsets in row ``i`` where documents start (packed shards); None for unpacked shards."""
        return self.reader.doc_starts(self._row(i)) if self.packed else None

    def sources(self) -> tuple[list[str], np.ndarray]:
        """(source names, per-row index into them) from the ``source`` column (read once, on demand)."""
        if self._sources is None:
            from knowlm_ray.corpus.shards import ShardError

            try:
                names, codes = self.reader.sources()
            except ShardError as exc:
                raise DataError(f"{exc} to mix sources by") from None
            self._sources = (names, codes[self._keep])
        return self._sources


class RecordRows:
    """Tokenized instruction records (``{"input_ids", "labels"}`` dicts) packed into three flat
    numpy arrays: cheap to pickle, so the driver tokenizes once and workers share one copy."""

    def __init__(self, records: Sequence[dict]):
        if not records:
            raise DataError("no usable instruction records (all empty, or their response cut away by cutoff_len)")
        lengths = np.fromiter((len(r["input_ids"]) for r in records), dtype=np.int64, count=len(records))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.input_ids = np.fromiter(
            (t for r in records for t in r["input_ids"]), dtype=np.int32, count=int(self.offsets[-1])
        )
        self.labels = np.fromiter(
            (t for r in records for t in r["labels"]), dtype=np.int32, count=int(self.offsets[-1])
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Row:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[a:b], self.labels[a:b]


# --------------------------------------------------------------------------- sampler
@dataclass
class SamplerState:
    epoch: int = 0
    offset: int = 0  # samples of this epoch's permutation already consumed (by all ranks)


class RankSampler:
    """Deterministic, resumable index stream; each rank takes a disjoint slice of a global batch."""

    def __init__(
        self,
        num_rows: int,
        seed: int,
        rank: int,
        world_size: int,
        micro_batch: int,
        state: SamplerState | dict | None = None,
    ):
        if num_rows <= 0:
            raise DataError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_rows, self.seed, self.rank = num_rows, seed, rank
        self.world_size, self.micro_batch = world_size, micro_batch
        self.state = SamplerState(**state) if isinstance(state, dict) else (state or SamplerState())
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._perm_epoch = epoch
        return self._perm

    def next_global(self) -> np.ndarray:
        """The next ``micro_batch * world_size`` indices (every rank computes the same ones)."""
        need, out = self.micro_batch * self.world_size, []
        while need > 0:
            perm = self.permutation(self.state.epoch)
            take = perm[self.state.offset : self.state.offset + need]
            out.append(take)
            need -= len(take)
            self.state.offset += len(take)
            if self.state.offset >= self.num_rows:
                self.state = SamplerState(self.state.epoch + 1, 0)
        return np.concatenate(out)

    def next_indices(self) -> list[int]:
        g = self.next_global()
        return g[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch].tolist()

    def state_dict(self) -> dict:
        return asdict(self.state)


class MixedSampler:
    """Per-source mixing with exact resume; each rank takes a disjoint slice of a global batch.

    ``groups[k]``: the row indices of source k; ``probs[k]``: the share of samples drawn from it.
    Sample g of the global stream comes from source ``choice(g)`` (seeded draws, in chunks), and
    takes that source's next row from its own permutation of (seed, epoch, k).
    """

    CHUNK = 4096

    def __init__(
        self,
        groups: dict[str, np.ndarray],
        probs: dict[str, float],
        seed: int,
        rank: int,
        world_size: int,
        micro_batch: int,
        state: dict | None = None,
    ):
        names = [n for n in groups if probs.get(n, 0) > 0]
        if not names:
            raise DataError("data mix: every source has weight 0")
        for n in names:
            if len(groups[n]) == 0:
                raise DataError(f"data mix: source {n!r} has weight {probs[n]} but no rows")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        p = np.array([probs[n] for n in names], dtype=np.float64)
        self.names, self.probs = names, p / p.sum()
        self.groups = [np.asarray(groups[n], dtype=np.int64) for n in names]
        self.seed, self.rank, self.world_size, self.micro_batch = seed, rank, world_size, micro_batch
        state = state or {}
        self.consumed = int(state.get("consumed", 0))
        saved = state.get("sources", {})
        self.pos = {n: dict(saved.get(n, {"epoch": 0, "offset": 0})) for n in names}
        self._chunk_id, self._chunk = -1, np.empty(0, dtype=np.int64)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _source_of(self, g: int) -> int:
        c = g // self.CHUNK
        if c != self._chunk_id:
            rng = np.random.default_rng([self.seed, 0x6D6978, c])
            self._chunk = rng.choice(len(self.names), size=self.CHUNK, p=self.probs)
            self._chunk_id = c
        return int(self._chunk[g % self.CHUNK])

    def _next_of(self, k: int) -> int:
        pos, n = self.pos[self.names[k]], len(self.groups[k])
        key = (k, pos["epoch"])
        if key not in self._perms:
            self._perms = {kk: v for kk, v in self._perms.items() if kk[0] != k}  # one epoch per source
            self._perms[key] = np.random.default_rng([self.seed, pos["epoch"], k + 1]).permutation(n)
        row = int(self.groups[k][self._perms[key][pos["offset"]]])
        pos["offset"] += 1
        if pos["offset"] >= n:
            pos["epoch"], pos["offset"] = pos["epoch"] + 1, 0
        return row

    def next_global(self) -> np.ndarray:
        out = np.empty(self.micro_batch * self.world_size, dtype=np.int64)
        for j in range(len(out)):
            out[j] = self._next_of(self._source_of(self.consumed))
            self.consumed += 1
        return out

    def next_indices(self) -> list[int]:
        g = self.next_global()
        return g[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch].tolist()

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "sources": {n: dict(v) for n, v in self.pos.items()}}


def manifest_source_weights(manifest: dict) -> dict[str, float]:
    """Per-source ``weight`` of a corpus manifest: ``by_source[s].weight`` if the pipeline wrote
    it, else the corpus config's ``inputs[].weight`` (SourceConfig.weight, default 1.0)."""
    weights: dict[str, float] = {}
    for name, info in (manifest.get("by_source") or {}).items():
        if isinstance(info, dict) and isinstance(info.get("weight"), (int, float)):
            weights[name] = float(info["weight"])
    for inp in (manifest.get("config") or {}).get("inputs") or []:
        if isinstance(inp, dict) and "source" in inp:
            weights.setdefault(str(inp["source"]), float(inp.get("weight", 1.0)))
    return weights


def mixing_probs(
    counts: dict[str, int], data_mix: dict[str, float] | None, manifest_weights: dict[str, float]
) -> dict[str, float] | None:
    """Share of samples per source, or None for the natural (unmixed) order.

    ``data_mix`` (training config) gives the shares directly. Otherwise the manifest's weights are
    sampling multipliers on each source's natural share (weight 2 = seen twice as often); all
    equal means natural order.
    """
    if data_mix is not None:
        unknown = sorted(set(data_mix) - set(counts))
        missing = sorted(set(counts) - set(data_mix))
        if unknown:
            raise DataError(
                f"data_mix names source(s) {unknown} that the data does not have (sources: {sorted(counts)})"
            )
        if missing:
            raise DataError(f"data_mix has no weight for source(s) {missing} (give 0 to leave them out)")
        if any(w < 0 for w in data_mix.values()) or sum(data_mix.values()) <= 0:
            raise DataError(f"data_mix weights must be >= 0 with a positive sum, got {data_mix}")
        total = sum(data_mix.values())
        return {s: data_mix[s] / total for s in counts}
    w = {s: manifest_weights.get(s, 1.0) for s in counts}
    if len(set(w.values())) <= 1:
        return None
    mass = {s: w[s] * counts[s] for s in counts}
    total = sum(mass.values())
    if total <= 0:
        raise DataError(f"corpus source weights leave nothing to sample: {w}")
    return {s: m / total for s, m in mass.items()}


# --------------------------------------------------------------------------- collation
def segment_starts(starts: np.ndarray | None, n_tokens: int) -> list[int]:
    """Document starts inside the first ``n_tokens`` tokens of a row (always begins with 0)."""
    if starts is None:
        return [0]
    return [0] + [int(s) for s in starts if 0 < s < n_tokens]


def collate(
    rows: Sequence[Row],
    seq_len: int,
    pad_id: int,
    pad_to_multiple_of: int = 1,
    starts: Sequence[np.ndarray | None] | None = None,
):
    """Cut rows to ``seq_len``, right-pad to the longest; labels are IGNORE_INDEX on padding.

    ``starts``: per row, where its documents start (packed rows). When any row holds more than
    one document, ``position_ids`` restart at 0 at every document and the first token of each
    later document is not a target (its prediction would come from the previous document).
    """
    import torch

    cut = [(ids[:seq_len], None if lab is None else lab[:seq_len]) for ids, lab in rows]
    width = max(len(ids) for ids, _ in cut)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(cut)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (ids, lab) in enumerate(cut):
        t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        input_ids[i, : len(t)] = t
        labels[i, : len(t)] = t if lab is None else torch.as_tensor(np.asarray(lab, dtype=np.int64))
        attention_mask[i, : len(t)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if starts is not None:
        segs = [segment_starts(s, len(ids)) for s, (ids, _) in zip(starts, cut)]
        if any(len(s) > 1 for s in segs):
            position_ids = torch.empty((n, width), dtype=torch.long)
            for i, seg in enumerate(segs):
                pos = np.arange(width, dtype=np.int64)
                for s in seg[1:]:
                    pos[s:] -= pos[s]  # restart at 0; padding continues the last document
                position_ids[i] = torch.as_tensor(pos)
                labels[i, seg[1:]] = IGNORE_INDEX
            batch["position_ids"] = position_ids
    return batch


def batch_tokens(batch) -> int:
    """Real (non-padding) tokens of a collated batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["num_tokens"])


class BatchStream:
    """Micro-batches for one rank: sampler + rows + collate, with the sampler state to checkpoint.

    ``packed``: "block" (positions restart per document and attention stays inside it: the batch
    goes without ``attention_mask`` so transformers derives a block-diagonal mask from the
    positions), "positions" (positions only), or None (rows are single documents). Document
    starts come from the shards' ``doc_starts`` column, or else from BOS tokens (``bos_id``).
    """

    def __init__(
        self, rows: Rows, sampler, seq_len: int, pad_id: int, packed: str | None = None, bos_id: int | None = None
    ):
        self.rows, self.sampler, self.seq_len, self.pad_id = rows, sampler, seq_len, pad_id
        self.packed, self.bos_id = packed, bos_id

    def _starts(self, i: int, row: Row) -> np.ndarray | None:
        starts = getattr(self.rows, "doc_starts", None)
        got = starts(i) if starts is not None else None
        if got is None and self.bos_id is not None:
            got = np.flatnonzero(np.asarray(row[0][: self.seq_len]) == self.bos_id)
        return got

    def collate_indices(self, indices: Sequence[int]):
        rows = [self.rows[i] for i in indices]
        starts = [self._starts(i, row) for i, row in zip(indices, rows)] if self.packed else None
        batch = collate(rows, self.seq_len, self.pad_id, starts=starts)
        if self.packed == "block" and "position_ids" in batch:
            import torch

            batch["num_tokens"] = torch.tensor(int(batch.pop("attention_mask").sum()))
        return batch

    def next_batch(self):
        return self.collate_indices(self.sampler.next_indices())

    def state_dict(self) -> dict:
        return self.sampler.state_dict()
