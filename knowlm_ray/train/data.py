"""Training batches: memory-mapped Arrow shards (or tokenized records), a resumable rank sampler,
and right-padding collation.

The sampler is KnowLM's ``MyDistributedSampler`` without ratio mixing: every epoch is a
permutation seeded by (seed, epoch); each micro-step takes the next ``micro_batch * world_size``
indices of that stream and rank r keeps slice r. Its whole state is (epoch, offset), saved in
every checkpoint, so a resumed run continues at the exact sample it stopped before.
"""
from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

IGNORE_INDEX = -100
Row = tuple[np.ndarray, "np.ndarray | None"]  # (input_ids, labels or None = learn every token)


class DataError(ValueError):
    """Training data that cannot be used; the message names the path."""


class Rows(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Row: ...


# --------------------------------------------------------------------------- shards
def find_shards(path: str | Path) -> list[Path]:
    """``part-*.arrow`` files of a corpus out_dir (``DIR/shards/``) or of the shards dir itself."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"training data not found: {p}")
    for d in (p / "shards", p):
        files = sorted(d.glob("part-*.arrow")) or sorted(d.glob("*.arrow"))
        if files:
            return files
    raise DataError(f"no Arrow shards (part-*.arrow) in {p} or {p / 'shards'}")


class ShardRows:
    """Rows of Arrow IPC *file* shards, read memory-mapped (zero-copy; pages load on demand).

    Required column ``input_ids: list<int>``; an optional ``labels`` column of the same shape is
    used as is (prepared instruction shards). Rows shorter than 2 tokens teach nothing (no next
    token) and would make an all-padding batch's loss NaN, so they are skipped.
    """

    def __init__(self, files: Sequence[str | Path]):
        import pyarrow as pa

        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        self._starts: list[int] = []
        self._keep: list[np.ndarray] = []
        total = 0
        for f in files:
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{f}: not an Arrow IPC file: {exc}") from None
            if "input_ids" not in reader.schema.names:
                raise DataError(f"{f}: no 'input_ids' column (columns: {reader.schema.names})")
            has_labels = "labels" in reader.schema.names
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                ids = batch.column("input_ids")
                offs, vals = ids.offsets.to_numpy(), ids.values.to_numpy()
                loffs = lvals = None
                if has_labels:
                    lab = batch.column("labels")
                    loffs, lvals = lab.offsets.to_numpy(), lab.values.to_numpy()
                keep = np.flatnonzero(np.diff(offs) >= 2)
                if len(keep) == 0:
                    continue
                self._parts.append((offs, vals, loffs, lvals))
                self._keep.append(keep)
                self._starts.append(total)
                total += len(keep)
        self._len = total
        if total == 0:
            names = [str(f) for f in files][:3]
            raise DataError(f"no usable rows (>= 2 tokens) in {len(files)} shard file(s): {names}")

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Row:
        k = bisect.bisect_right(self._starts, i) - 1
        offs, vals, loffs, lvals = self._parts[k]
        r = int(self._keep[k][i - self._starts[k]])
        ids = vals[offs[r]:offs[r + 1]]
        labels = None if lvals is None else lvals[loffs[r]:loffs[r + 1]]
        return ids, labels


class RecordRows:
    """Tokenized instruction records (``{"input_ids", "labels"}`` dicts) packed into three flat
    numpy arrays: cheap to pickle, so the driver tokenizes once and workers share one copy."""

    def __init__(self, records: Sequence[dict]):
        if not records:
            raise DataError("no usable instruction records (all empty, or their response cut away by cutoff_len)")
        lengths = np.fromiter((len(r["input_ids"]) for r in records), dtype=np.int64, count=len(records))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.input_ids = np.fromiter((t for r in records for t in r["input_ids"]), dtype=np.int32,
                                     count=int(self.offsets[-1]))
        self.labels = np.fromiter((t for r in records for t in r["labels"]), dtype=np.int32,
                                  count=int(self.offsets[-1]))

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

    def __init__(self, num_rows: int, seed: int, rank: int, world_size: int, micro_batch: int,
                 state: SamplerState | dict | None = None):
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
            take = perm[self.state.offset:self.state.offset + need]
            out.append(take)
            need -= len(take)
            self.state.offset += len(take)
            if self.state.offset >= self.num_rows:
                self.state = SamplerState(self.state.epoch + 1, 0)
        return np.concatenate(out)

    def next_indices(self) -> list[int]:
        g = self.next_global()
        return g[self.rank * self.micro_batch:(self.rank + 1) * self.micro_batch].tolist()

    def state_dict(self) -> dict:
        return asdict(self.state)


# --------------------------------------------------------------------------- collation
def collate(rows: Sequence[Row], seq_len: int, pad_id: int, pad_to_multiple_of: int = 1):
    """Cut rows to ``seq_len``, right-pad to the longest; labels are IGNORE_INDEX on padding."""
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
        input_ids[i, :len(t)] = t
        labels[i, :len(t)] = t if lab is None else torch.as_tensor(np.asarray(lab, dtype=np.int64))
        attention_mask[i, :len(t)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BatchStream:
    """Micro-batches for one rank: sampler + rows + collate, with the sampler state to checkpoint."""

    def __init__(self, rows: Rows, sampler: RankSampler, seq_len: int, pad_id: int):
        self.rows, self.sampler, self.seq_len, self.pad_id = rows, sampler, seq_len, pad_id

    def next_batch(self):
        return collate([self.rows[i] for i in self.sampler.next_indices()], self.seq_len, self.pad_id)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()
