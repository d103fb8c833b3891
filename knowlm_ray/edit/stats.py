"""The key statistics ROME and MEMIT read: C = E[k k^T] of a module's inputs over corpus tokens.

    python jobs/edit_stats.py --config jobs/configs/tiny_edit_stats.yaml [key.path=value ...]

For each module (``model.layers.L.mlp.down_proj``: its input is the "key" k of ROME / MEMIT) the
job sums ``k k^T`` and counts tokens over every token of the first ``n_samples`` corpus rows
(``ShardReader`` rows, in shard order, cut to ``max_tokens``). That is a map over rows and a sum:

* the rows are cut into numbered blocks of ``block_rows``; each block is one Ray Data row sent by
  ``map_batches`` to an actor of an ``ActorPoolStrategy`` pool (``num_actors``), each actor holding
  the model. A forward pass stops after the deepest measured module (layers above it are never
  run); forward pre-hooks take the module inputs of the real (unpadded) tokens, summed in float64
  from float32 products.
* an actor writes its block's partial sums as ``parts/block-NNNNN.safetensors`` (temp name, then
  rename: a block file exists only when the block is done). The driver folds finished blocks into
  a running total and, every ``fold_every_s``, writes ``total.safetensors`` (its metadata lists
  the blocks it holds) atomically and then deletes the folded block files. A killed run therefore
  leaves a total and some block files; a re-run with the same settings loads both and runs only
  the blocks in neither.
* at the end, per module, C = sum / tokens as float32 goes to the cache:
  ``CACHE/<model checksum[:16]>/<module>/n<rows>-<data id>.safetensors`` (tensor ``mom2``, metadata
  with the sample and token counts), where ``load_cached_stats`` finds it.

The model checksum (``model_checksum``) is the sha256 of the canonical config and each weight
file's sha256, taken from the model's ``checksums.sha256`` when it lists the file, from the Hugging
Face cache's blob name when the file links to one, and otherwise hashed (remembered in the cache
dir by path, size and mtime). Several modules are measured in one pass over the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_path, atomic_write_text
from knowlm_ray.config import ConfigError
from knowlm_ray.edit.stats_config import CACHE_ENV, EditStatsConfig, default_cache_dir

__all__ = ["CACHE_ENV", "compute_stats", "default_cache_dir", "load_cached_stats", "model_checksum", "run"]
BLOCK = "block-{:05d}.safetensors"
TOTAL = "total.safetensors"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


# ------------------------------------------------------------------------------- checksums
def _file_sha256(f: Path, listed: dict[str, str], memo_file: Path | None) -> str:
    from knowlm_ray.models.checkpoint import sha256_file

    if f.name in listed:
        return listed[f.name]
    if f.is_symlink() and _HEX64.match(f.resolve().name):  # the HF cache names blobs by sha256
        return f.resolve().name
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except ValueError:
            memo = {}
    if key not in memo:
        memo[key] = sha256_file(f)
        if memo_file is not None:
            atomic_write_text(memo_file, json.dumps(memo, indent=1))
    return memo[key]


def model_checksum(model_dir: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 naming a model's weights and config (see the module docstring)."""
    from knowlm_ray.models.checkpoint import Checkpoint, read_manifest
    from knowlm_ray.models.edit_delta import config_sha256

    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise ConfigError(f"model: no HF model directory at {d} (no config.json)")
    listed = read_manifest(d) or {}
    memo = _cache_dir(cache_dir) / "file_sha256.json"
    with Checkpoint(d) as ck:
        files = ck.files
    lines = [f"config {config_sha256(d)}"] + [f"{f.name} {_file_sha256(f, listed, memo)}" for f in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _data_id(data: str | Path, files: Sequence[Path]) -> str:
    desc = [str(Path(data).resolve())] + [f"{f.name}:{f.stat().st_size}" for f in files]
    return hashlib.sha256("\n".join(desc).encode()).hexdigest()


def _safe(module: str) -> str:
    return re.sub(r"[^\w.-]", "_", module)


def cache_file(cache_dir: Path, model_key: str, module: str, n_rows: int, data_id: str) -> Path:
    return cache_dir / model_key[:16] / _safe(module) / f"n{n_rows}-{data_id[:12]}.safetensors"


# ------------------------------------------------------------------------------- the map
def check_modules(model_dir: str | Path, modules: Iterable[str]) -> None:
    """Refuse a module the model lacks, naming it (and the layers it has)."""
    from knowlm_ray.models.checkpoint import Checkpoint

    with Checkpoint(model_dir) as ck:
        names = set(ck.names())
    for m in modules:
        if f"{m}.weight" not in names:
            layers = sorted({int(x) for x in re.findall(r"layers\.(\d+)\.", " ".join(names))})
            have = f" (it has layers {layers[0]}..{layers[-1]})" if layers else ""
            raise ConfigError(f"module {m}: the model in {model_dir} has no {m}.weight{have}")


class _Stop(Exception):
    pass


def load_model(model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return model.to(device).eval()


@dataclass
class Sums:
    """Per module: sum of k k^T (float64) and the token count; the rows and blocks they cover."""

    sums: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    blocks: set[int] = field(default_factory=set)

    def add(self, other: Sums) -> None:
        for m, s in other.sums.items():
            if m in self.sums:
                self.sums[m] += s
            else:
                self.sums[m] = s.clone()
            self.tokens[m] = self.tokens.get(m, 0) + other.tokens[m]
        self.rows += other.rows
        self.blocks |= other.blocks

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        meta = {"tokens": json.dumps(self.tokens), "rows": str(self.rows), "blocks": json.dumps(sorted(self.blocks))}
        with atomic_path(path) as tmp:
            save_file({f"{m}.sum": s.contiguous() for m, s in self.sums.items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> Sums:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
            sums = {k[: -len(".sum")]: fh.get_tensor(k) for k in fh.keys()}
        return cls(sums, json.loads(meta["tokens"]), int(meta["rows"]), set(json.loads(meta["blocks"])))


def block_sums(
    model, modules: Sequence[str], rows: Iterable[Sequence[int]], batch_rows: int = 8, device: str | None = None
) -> Sums:
    """Sums of k k^T over every token of ``rows`` (token id lists) for each of ``modules``."""
    import numpy as np
    import torch

    device = device or str(next(model.parameters()).device)
    order = [n for n, _ in model.named_modules() if n in set(modules)]
    out = Sums()
    mask_box: list[Any] = [None]
    handles = []

    def hook_for(name: str, last: bool):
        def pre_hook(_mod, args):
            k = args[0].detach()
            k = k[mask_box[0]].to(torch.float32)  # [tokens, in]: real tokens only
            s = (k.T @ k).to(torch.float64)  # summed on the model's device, moved once per block
            if name in out.sums:
                out.sums[name] += s
            else:
                out.sums[name] = s
            out.tokens[name] = out.tokens.get(name, 0) + int(k.shape[0])
            if last:
                raise _Stop  # nothing above the deepest measured module is needed

        return pre_hook

    for name in order:
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(name, name == order[-1])))
    try:
        batch: list[Sequence[int]] = []

        def run(batch):
            width = max(len(r) for r in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))  # a copy: shards are read-only maps
                mask[i, : len(r)] = True
            mask_box[0] = mask.to(device)
            with torch.no_grad():
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device, torch.long), use_cache=False)
                except _Stop:
                    pass
            out.rows += len(batch)

        for r in rows:
            if len(r) == 0:
                continue
            batch.append(r)
            if len(batch) == batch_rows:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        for h in handles:
            h.remove()
    out.sums = {m: t.to("cpu") for m, t in out.sums.items()}
    for m in order:  # a block of empty rows still names every module
        if m not in out.sums:
            dim = model.get_submodule(m).weight.shape[1]
            out.sums[m] = torch.zeros((dim, dim), dtype=torch.float64)
            out.tokens[m] = 0
    return out


# ------------------------------------------------------------------------------- plan and state
@dataclass
class Plan:
    modules: list[str]
    model_key: str
    data_id: str
    n_rows: int
    blocks: list[tuple[int, int, int]]  # (block, first row, end row)
    cache_dir: Path
    work: Path

    def cache_files(self) -> dict[str, Path]:
        return {m: cache_file(self.cache_dir, self.model_key, m, self.n_rows, self.data_id) for m in self.modules}


def make_plan(cfg: EditStatsConfig) -> Plan:
    from knowlm_ray.corpus.shards import ShardReader

    modules = cfg.module_names()
    check_modules(cfg.model, modules)
    reader = ShardReader(cfg.data)
    total = len(reader)
    n_rows = total if cfg.n_samples == 0 else min(cfg.n_samples, total)
    if n_rows == 0:
        raise ConfigError(f"data: {cfg.data} holds no rows")
    cache = _cache_dir(cfg.cache_dir)
    model_key = model_checksum(cfg.model, cache)
    data_id = _data_id(cfg.data, reader.files)
    blocks = [(b, lo, min(lo + cfg.block_rows, n_rows)) for b, lo in enumerate(range(0, n_rows, cfg.block_rows))]
    settings = {
        "model": model_key,
        "data": data_id,
        "modules": sorted(modules),
        "rows": n_rows,
        "max_tokens": cfg.max_tokens,
        "block_rows": cfg.block_rows,
    }
    run_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    work = cache / model_key[:16] / "runs" / run_key[:16]
    return Plan(modules, model_key, data_id, n_rows, blocks, cache, work)


def rows_of(reader, lo: int, hi: int, max_tokens: int) -> Iterable[Sequence[int]]:
    for i in range(lo, hi):
        ids = reader.input_ids(i)
        yield ids[:max_tokens] if max_tokens else ids


def run_block(model, reader, block: tuple[int, int, int], cfg: EditStatsConfig, parts: Path) -> dict[str, Any]:
    """Sum one block and write its partial sums atomically; a small row for the driver."""
    t0 = time.time()
    b, lo, hi = block
    s = block_sums(model, cfg.module_names(), rows_of(reader, lo, hi, cfg.max_tokens), cfg.batch_rows)
    s.blocks = {b}
    s.save(parts / BLOCK.format(b))
    tokens = max(s.tokens.values(), default=0)
    return {"block": b, "rows": s.rows, "tokens": tokens, "started": t0, "finished": time.time()}


class StatsWorker:
    """A Ray Data actor: the model and the shards, many blocks (``map_batches`` callable class)."""

    def __init__(self, cfg: dict[str, Any], parts: str):
        import torch

        from knowlm_ray.corpus.shards import ShardReader

        self.cfg = EditStatsConfig.model_validate(cfg)
        torch.set_num_threads(self.cfg.threads_per_actor)
        device = "cuda" if self.cfg.use_gpu else self.cfg.device
        self.model = load_model(self.cfg.model, device, self.cfg.dtype)
        self.reader = ShardReader(self.cfg.data)
        self.parts = Path(parts)

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        out = [
            {
                **run_block(self.model, self.reader, (r["block"], r["lo"], r["hi"]), self.cfg, self.parts),
                "worker": os.getpid(),
            }
            for r in rows
        ]
        return pa.Table.from_pylist(out)


class _Total:
    """The running total of a run: ``work/total.safetensors`` plus block files not folded yet."""

    def __init__(self, work: Path):
        self.work, self.parts = work, work / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob(".*.tmp"):  # what a killed writer left
            tmp.unlink(missing_ok=True)
        for tmp in work.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self.sums = Sums.load(work / TOTAL) if (work / TOTAL).is_file() else Sums()
        self.unsaved: list[Path] = []
        for f in sorted(self.parts.glob("block-*.safetensors")):
            self.fold(f)
        self.last_save = time.monotonic()

    def fold(self, f: Path) -> None:
        b = int(f.name[len("block-") : -len(".safetensors")])
        if b in self.sums.blocks:  # folded and saved, deletion interrupted
            f.unlink(missing_ok=True)
            return
        self.sums.add(Sums.load(f))
        self.unsaved.append(f)

    def save(self) -> None:
        if self.unsaved:
            self.sums.save(self.work / TOTAL)
            for f in self.unsaved:
                f.unlink(missing_ok=True)
            self.unsaved = []
        self.last_save = time.monotonic()


def _write_cache(plan: Plan, sums: Sums, cfg: EditStatsConfig) -> dict[str, str]:
    import torch
    from safetensors.torch import save_file

    written = {}
    for m, f in plan.cache_files().items():
        n_tok = sums.tokens.get(m, 0)
        if n_tok == 0:
            raise ConfigError(f"data: the first {plan.n_rows} rows of {cfg.data} hold no tokens")
        c = (sums.sums[m] / n_tok).to(torch.float32)
        meta = {
            "module": m,
            "n_samples": str(sums.rows),
            "n_tokens": str(n_tok),
            "model": cfg.model,
            "model_checksum": plan.model_key,
            "data": cfg.data,
            "data_id": plan.data_id,
            "max_tokens": str(cfg.max_tokens),
        }
        with atomic_path(f) as tmp:
            save_file({"mom2": c.contiguous()}, str(tmp), metadata=meta)
        written[m] = str(f)
    return written


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"[edit_stats] {msg}", file=sys.stderr, flush=True)


def run(
    cfg: EditStatsConfig, progress: bool = True, *, use_ray: bool = True, stop_after: int | None = None
) -> dict[str, Any]:
    """The whole job; returns the summary. ``use_ray=False``: the same blocks in this process, one
    after another (the plain loop). ``stop_after``: stop as a kill would after that many blocks of
    this run are done (tests: a real kill needs a second Ray cluster, seconds the suite lacks)."""
    import shutil

    t0 = time.perf_counter()
    plan = make_plan(cfg)
    done = plan.cache_files()
    if all(f.is_file() for f in done.values()):
        _say(f"cached: {', '.join(plan.modules)} over {plan.n_rows} rows in {plan.cache_dir}", progress)
        return {
            "modules": plan.modules,
            "n_samples": plan.n_rows,
            "cached": True,
            "files": {m: str(f) for m, f in done.items()},
        }
    total = _Total(plan.work)
    atomic_write_text(plan.work / "state.json", json.dumps({"config": cfg.model_dump(), "rows": plan.n_rows}, indent=1))
    have = total.sums.blocks
    pending = [b for b in plan.blocks if b[0] not in have]
    _say(
        f"{len(plan.modules)} modules, {plan.n_rows} rows in {len(plan.blocks)} blocks "
        f"({len(plan.blocks) - len(pending)} done before){'' if use_ray else ', in this process'}",
        progress,
    )
    ran: list[dict[str, Any]] = []

    def finished(row: dict[str, Any]) -> None:
        ran.append(row)
        total.fold(total.parts / BLOCK.format(row["block"]))
        _say(
            f"block {row['block']:>5} done: {row['rows']} rows, {row['tokens']} tokens in "
            f"{row['finished'] - row['started']:.1f}s ({len(ran)}/{len(pending)} blocks this run)",
            progress,
        )
        if time.monotonic() - total.last_save >= cfg.fold_every_s:
            total.save()
        if stop_after is not None and len(ran) >= stop_after:
            raise KeyboardInterrupt(f"stopped after {len(ran)} blocks (stop_after)")

    if pending and use_ray:
        import ray
        from ray.data import ActorPoolStrategy

        items = [{"block": b, "lo": lo, "hi": hi} for b, lo, hi in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            StatsWorker,
            fn_constructor_kwargs={"cfg": cfg.model_dump(), "parts": str(total.parts)},
            batch_size=1,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=min(cfg.num_actors, len(pending))),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=1 if cfg.use_gpu else 0,
        )
        for row in ds.iter_rows():
            finished(row)
    elif pending:
        import torch

        from knowlm_ray.corpus.shards import ShardReader

        old = torch.get_num_threads()
        torch.set_num_threads(cfg.threads_per_actor)
        try:
            model = load_model(cfg.model, "cuda" if cfg.use_gpu else cfg.device, cfg.dtype)
            reader = ShardReader(cfg.data)
            for block in pending:
                finished({**run_block(model, reader, block, cfg, total.parts), "worker": os.getpid()})
        finally:
            torch.set_num_threads(old)
    total.save()
    missing = [b for b, _, _ in plan.blocks if b not in total.sums.blocks]
    if missing:  # a bug, not a user error: every pending block should have come back
        raise RuntimeError(f"blocks {missing[:5]} have no partial sums")
    files = _write_cache(plan, total.sums, cfg)
    shutil.rmtree(plan.work, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    tokens_run = sum(r["tokens"] for r in ran)
    window = max(r["finished"] for r in ran) - min(r["started"] for r in ran) if ran else 0.0
    n_tok = max(total.sums.tokens.values())
    per_actor: dict[str, dict[str, float]] = {}
    for r in ran:  # each actor's own span: the pool's steady rate without its start-up skew
        w = per_actor.setdefault(str(r["worker"]), {"blocks": 0, "tokens": 0, "first": r["started"], "last": 0.0})
        w["blocks"] += 1
        w["tokens"] += r["tokens"]
        w["first"], w["last"] = min(w["first"], r["started"]), max(w["last"], r["finished"])
    steady = sum(w["tokens"] / (w["last"] - w["first"]) for w in per_actor.values() if w["last"] > w["first"])
    summary = {
        "modules": plan.modules,
        "n_samples": total.sums.rows,
        "n_tokens": n_tok,
        "blocks": len(plan.blocks),
        "blocks_run": len(ran),
        "blocks_resumed": len(plan.blocks) - len(ran),
        "actors_used": len({r["worker"] for r in ran}),
        "elapsed_s": round(elapsed, 3),
        "map_window_s": round(window, 3),
        "tokens_per_s": round(tokens_run / window, 1) if window else 0.0,
        "steady_tokens_per_s": round(steady, 1),
        "model_checksum": plan.model_key,
        "cached": False,
        "files": files,
    }
    _say(
        f"C = E[k k^T] of {len(plan.modules)} modules over {total.sums.rows} rows / {n_tok} tokens "
        f"({len(ran)} blocks run, {summary['blocks_resumed']} resumed, {elapsed:.1f}s) -> {plan.cache_dir}",
        progress,
    )
    return summary


# ------------------------------------------------------------------------------- readers
def load_cached_stats(
    model_dir: str | Path, module_name: str, *, cache_dir: str | Path | None = None, min_samples: int = 0
):
    """The cached C = E[k k^T] (float32 [in, in]) of ``module_name``'s inputs for this model and
    its sample count, the one over the most samples (at least ``min_samples``); None when none."""
    from safetensors import safe_open

    cache = _cache_dir(cache_dir)
    d = cache / model_checksum(model_dir, cache)[:16] / _safe(module_name)
    best = None
    for f in d.glob("n*.safetensors") if d.is_dir() else []:
        try:
            with safe_open(str(f), "pt") as fh:
                n = int(fh.metadata()["n_samples"])
                if n >= min_samples and (best is None or n > best[1]):
                    best = (fh.get_tensor("mom2"), n)
        except Exception:  # a foreign or broken file in the cache is skipped, not fatal
            continue
    return best


def compute_stats(
    model_dir: str | Path,
    module_name: str | Sequence[str],
    data: str | Path,
    n_samples: int,
    *,
    cache_dir: str | Path | None = None,
    max_tokens: int = 0,
    batch_rows: int = 8,
    block_rows: int = 256,
    use_ray: bool | None = None,
    num_actors: int = 2,
    progress: bool = True,
):
    """Compute (or find cached) C for one module — ``(C, n_samples)`` — or several — a dict of
    them — over the first ``n_samples`` rows of corpus shards ``data``, and cache it. ``use_ray``
    None: the Ray Data job when Ray is running in this process, else the plain loop."""
    if use_ray is None:
        ray = sys.modules.get("ray")
        use_ray = ray is not None and ray.is_initialized()
    names = [module_name] if isinstance(module_name, str) else list(module_name)
    cfg = EditStatsConfig(
        model=str(model_dir),
        data=str(data),
        modules=names,
        n_samples=n_samples,
        max_tokens=max_tokens,
        batch_rows=batch_rows,
        block_rows=block_rows,
        num_actors=num_actors,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    summary = run(cfg, progress, use_ray=use_ray)
    got = {}
    for m in names:
        from safetensors import safe_open

        with safe_open(summary["files"][m], "pt") as fh:
            got[m] = (fh.get_tensor("mom2"), int(fh.metadata()["n_samples"]))
    return got[module_name] if isinstance(module_name, str) else got
