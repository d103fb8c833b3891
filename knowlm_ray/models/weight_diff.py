"""Publish a fine-tuned model as a difference from its base, and recover it: tuned = raw + diff.

This is KnowLM's convention (``tools/weight_diff.py``, from Stanford Alpaca): the diff directory
is an ordinary model directory (config, tokenizer, weights) whose every tensor is
``tuned - raw``; recovering adds the raw model back tensor by tensor. KnowLM's own tool holds both
models in memory (~100 GB for 13B in fp32); here one tensor of each is in memory at a time and
the output is streamed to disk, so peak memory is a few tensors, not two models.

Integrity, strongest first:
* ``checksums.sha256`` in the diff directory (written by ``make_diff``): every file recover reads
  or copies (weights, index, fingerprints, config, tokenizer files) must be listed in it and is
  re-hashed before any work; a corrupted or incomplete download is refused up front.
* ``knowlm_diff.json`` (written by ``make_diff``): per-tensor fingerprints (sum, L2 norm) of the
  raw and the tuned model. Recovery checks each raw tensor (a wrong base is refused, naming the
  first tensor that differs) and each recovered tensor (a corrupted diff is refused likewise).
* KnowLM's "naive integrity check": the sum over all tensors' sums (``--expect-sum``; KnowLM
  publishes 94052.2891 for ZhiXi-13B in fp32). Per-tensor sums are taken in float32 like theirs
  and added in float64.
* Always: the same tensor names and shapes on both sides (a message names the tensor), finite
  values in the result, and an output written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from knowlm_ray.models.checkpoint import (
    MANIFEST,
    SIDE_FILES,
    Checkpoint,
    WeightsError,
    check_manifest,
    check_out,
    copy_side_files,
    dtype_name,
    parse_dtype,
    read_manifest,
    single_threaded,
    staged_dir,
    write_config,
    write_manifest,
    write_shards,
)

DIFF_META = "knowlm_diff.json"
DIFF_FORMAT = "knowlm-ray-diff/1"
# Buffers older transformers saved in checkpoints and newer ones recompute (not weights).
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
CHUNK = 1 << 16  # elements per step of the chunked loops (temporaries of ~256 KB stay in cache)


@dataclass
class Stats:
    knowlm_sum: float  # KnowLM's per-tensor sum (float32 accumulation)
    sum: float  # float64
    l2: float  # float64

    def as_list(self) -> list[float]:
        return [self.knowlm_sum, self.sum, self.l2]


class _Acc:
    """Sum and sum of squares accumulated chunk by chunk: float32 over rows of 16 elements (fast,
    and the same on any thread count), float64 across rows; plus KnowLM's float32 chunk sums."""

    ROW = 16

    def __init__(self):
        self.s = self.sq = self.ks = 0.0

    def add(self, c: torch.Tensor) -> None:
        c = c.reshape(-1)
        if c.dtype != torch.float32:
            c = c.to(torch.float32)
        self.ks += float(c.sum())
        k = (c.numel() // self.ROW) * self.ROW
        if k:
            m = c[:k].view(-1, self.ROW)
            self.s += float(m.sum(1).to(torch.float64).sum())
            self.sq += float((m * m).sum(1).to(torch.float64).sum())
        if k < c.numel():
            r = c[k:].to(torch.float64)
            self.s += float(r.sum())
            self.sq += float(torch.dot(r, r))

    def stats(self, knowlm_sum: float | None = None) -> Stats:
        return Stats(self.ks if knowlm_sum is None else knowlm_sum, self.s, math.sqrt(self.sq))


def tensor_stats(t: torch.Tensor) -> Stats:
    flat = t.reshape(-1)
    acc = _Acc()
    for i in range(0, flat.numel(), CHUNK):
        acc.add(flat[i : i + CHUNK])
    # KnowLM's number: the tensor's own sum, as torch computes it for the whole tensor
    return acc.stats(float(t.sum()) if t.dtype == torch.float32 else float(t.sum(dtype=torch.float32)))


def _chunked_add(
    a: torch.Tensor,
    b_chunks,
    dtype: torch.dtype,
    sign: float = 1.0,
    check: torch.Tensor | None = None,
    b_acc: _Acc | None = None,
) -> tuple[torch.Tensor, int, float]:
    """``(a + sign*b).to(dtype)``, computed in float32, with ``b`` streamed as (start, flat chunk)
    pairs: in place in ``a`` when the dtypes allow, so memory is one whole tensor plus one chunk.
    With ``check`` (the tuned tensor, for a diff), also count the elements where ``b + result`` does
    not give ``check`` back exactly; ``b_acc`` collects ``b``'s fingerprint on the way."""
    out = a if a.dtype == dtype else torch.empty(a.shape, dtype=dtype)
    fa, fo = a.reshape(-1), out.reshape(-1)
    fc = check.reshape(-1) if check is not None else None
    bad, err, seen = 0, 0.0, 0
    for i, yb in b_chunks:
        sl = slice(i, i + yb.numel())
        seen += yb.numel()
        if b_acc is not None:
            b_acc.add(yb)
        y = yb.to(torch.float32)
        x = fa[sl].to(torch.float32)
        x = x + y if sign > 0 else x - y
        if fc is not None:  # the round trip as recover will do it: raw + diff -> tuned dtype
            back = (y + x.to(dtype).to(torch.float32)).to(fc.dtype)
            miss = back != fc[sl]
            n = int(miss.sum())
            if n:
                bad += n
                err = max(err, float((back[miss].float() - fc[sl][miss].float()).abs().max()))
        fo[sl] = x.to(dtype)
    if seen != fa.numel():
        raise WeightsError(f"internal error: streamed {seen} of {fa.numel()} elements")
    return out, bad, err


def _eps(*dtypes: torch.dtype) -> float:
    return max(torch.finfo(d).eps for d in dtypes if d.is_floating_point)


def _same(a: Stats, b_sum: float, b_l2: float, tol: float) -> bool:
    return abs(a.sum - b_sum) <= tol and abs(a.l2 - b_l2) <= tol


def _pair_problems(left: Checkpoint, right: Checkpoint, lwhat: str, rwhat: str) -> list[str]:
    """Name/shape/dtype problems between two checkpoints that must hold the same tensors."""
    li, ri = left.infos(), right.infos()
    problems = []
    for name, ti in li.items():
        if IGNORED.search(name):
            continue
        if name not in ri:
            problems.append(f"tensor {name} is in the {lwhat} but not in the {rwhat}")
        elif ti.shape != ri[name].shape:
            problems.append(
                f"tensor {name} has shape {list(ti.shape)} in the {lwhat} but {list(ri[name].shape)} in the {rwhat}"
            )
        elif not (ti.dtype.is_floating_point and ri[name].dtype.is_floating_point):
            problems.append(
                f"tensor {name} is {dtype_name(ti.dtype)}/{dtype_name(ri[name].dtype)}: "
                "only floating-point tensors can be diffed"
            )
    problems += [
        f"tensor {n} is in the {rwhat} but not in the {lwhat}" for n in ri if n not in li and not IGNORED.search(n)
    ]
    return problems


def _refuse(problems: list[str], hint: str) -> None:
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"{'; '.join(problems[:3])}{more}. {hint}")


@single_threaded()
def make_diff(raw: str | Path, tuned: str | Path, out: str | Path, dtype: str | None = None) -> dict:
    """diff = tuned - raw, written as a model directory with fingerprints and a checksum manifest."""
    t0 = time.perf_counter()
    out_dtype = parse_dtype(dtype)
    check_out(out, raw, tuned)
    R, T = Checkpoint(raw, what="raw model"), Checkpoint(tuned, what="tuned model")
    with R, T:
        _refuse(
            _pair_problems(T, R, "tuned model", "raw model"),
            "The raw model must be the exact base the tuned model was trained from.",
        )
        tinfo, rinfo = T.infos(), R.infos()
        shards = [
            [(n, out_dtype or tinfo[n].dtype, tinfo[n].shape) for n in names if not IGNORED.search(n)]
            for names in T.shards()
        ]
        meta = {"format": DIFF_FORMAT, "convention": "tuned = raw + diff", "tensors": {}}
        total = {"raw": 0.0, "tuned": 0.0}
        inexact = 0
        max_err = 0.0

        def produce(name: str, dt: torch.dtype) -> torch.Tensor:
            nonlocal inexact, max_err
            t = T.read(name)
            st = tensor_stats(t)
            raw_acc = _Acc()
            # diff = tuned - raw, raw streamed in chunks; check=t counts what KnowLM's format
            # cannot give back exactly (e.g. a tuned value ~0 next to a large raw value)
            d, n_bad, err = _chunked_add(t, R.iter_chunks(name, CHUNK), dt, -1.0, check=t, b_acc=raw_acc)
            sr = raw_acc.stats()
            total["raw"] += sr.knowlm_sum
            total["tuned"] += st.knowlm_sum
            inexact += n_bad
            max_err = max(max_err, err)
            meta["tensors"][name] = {
                "shape": list(d.shape),
                "raw_dtype": dtype_name(rinfo[name].dtype),
                "tuned_dtype": dtype_name(tinfo[name].dtype),
                "raw": sr.as_list(),
                "tuned": st.as_list(),
            }
            return d

        with staged_dir(out) as tmp:
            sums = write_shards(tmp, shards, produce, "diff")
            meta.update(
                raw_sum=total["raw"],
                tuned_sum=total["tuned"],
                tuned_dtype=dtype_name(next(iter(tinfo.values())).dtype) if tinfo else None,
                inexact_elements=inexact,
                max_abs_error=max_err,
            )
            (tmp / DIFF_META).write_text(json.dumps(meta, indent=1) + "\n")
            write_config(T.dir, tmp, dtype=out_dtype)
            copy_side_files(T.dir, tmp)
            write_manifest(tmp, sums)
    n = len(meta["tensors"])
    return {
        "out": str(out),
        "tensors": n,
        "shards": len(shards),
        "tuned_sum": total["tuned"],
        "raw_sum": total["raw"],
        "inexact_elements": inexact,
        "max_abs_error": max_err,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _load_meta(diff_dir: Path) -> dict | None:
    f = diff_dir / DIFF_META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{f}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != DIFF_FORMAT or not isinstance(meta.get("tensors"), dict):
        raise WeightsError(f"{f}: not a {DIFF_FORMAT} file")
    return meta


def default_sum_tol(expected: float) -> float:
    """KnowLM's check uses atol 1e-2 on an fp32 running total; we allow for summation order too."""
    return 1e-2 + 2e-6 * abs(expected)


@single_threaded()
def recover(
    raw: str | Path,
    diff: str | Path,
    out: str | Path,
    expect_sum: float | None = None,
    sum_tol: float | None = None,
    dtype: str | None = None,
    verify_checksums: bool = True,
) -> dict:
    """tuned = raw + diff, tensor by tensor; refuses a corrupted diff or a wrong base."""
    t0 = time.perf_counter()
    out_dtype = parse_dtype(dtype)
    check_out(out, raw, diff)
    D, R = Checkpoint(diff, what="diff"), Checkpoint(raw, what="raw model")
    notes = []
    with D, R:
        meta = _load_meta(D.dir)
        if verify_checksums:
            sums = read_manifest(D.dir)
            if sums is not None:
                # every file recover reads (weights, index, fingerprints) or copies (config, tokenizer)
                used = [f.relative_to(D.dir).as_posix() for f in D.files] + ([DIFF_META] if meta else [])
                if D.index_file is not None:
                    used.append(D.index_file.name)
                used += [n for n in ("config.json", *SIDE_FILES) if (D.dir / n).is_file()]
                _refuse(
                    [f"{n} is not listed in {MANIFEST}" for n in used if n not in sums]
                    + check_manifest(D.dir, only=used),
                    "The diff is incomplete or corrupted: download it again (every file recover reads or copies "
                    f"must be listed in {MANIFEST} with its sha256).",
                )
                notes.append(f"all {len(used)} diff files match {MANIFEST}")
            else:
                notes.append(f"diff has no {MANIFEST}: files not checksummed")
        dinfo, rinfo = D.infos(), R.infos()
        problems = _pair_problems(D, R, "diff", "raw model")
        if meta is not None:
            want = set(meta["tensors"])
            have = {n for n in dinfo if not IGNORED.search(n)}
            problems += [
                f"tensor {n} is listed in {DIFF_META} but missing from the diff files" for n in sorted(want - have)
            ]
            problems += [f"tensor {n} is in the diff files but not in {DIFF_META}" for n in sorted(have - want)]
        _refuse(problems, "Is --raw the base model this diff was made from, and is the diff complete?")

        def target_dtype(name: str) -> torch.dtype:
            if out_dtype is not None:
                return out_dtype
            if meta is not None and name in meta["tensors"]:
                return parse_dtype(meta["tensors"][name]["tuned_dtype"])
            return dinfo[name].dtype

        shards = [
            [(n, target_dtype(n), dinfo[n].shape) for n in names if not IGNORED.search(n)] for names in D.shards()
        ]
        ignored_sum = 0.0
        for n in dinfo:  # KnowLM summed the checkpoints' inv_freq buffers too (they are not written out)
            if IGNORED.search(n) and n in rinfo:
                ignored_sum += tensor_stats(R.read(n).float() + D.read(n).float()).knowlm_sum
        total = ignored_sum

        def produce(name: str, dt: torch.dtype) -> torch.Tensor:
            nonlocal total
            r = R.read(name)
            rec = meta["tensors"].get(name) if meta else None
            if rec is not None:
                sr = tensor_stats(r)
                raw_dt = parse_dtype(rec["raw_dtype"])
                tol = 1e-6 * sr.l2 if raw_dt == r.dtype else 8 * _eps(raw_dt, r.dtype) * sr.l2
                if not _same(sr, rec["raw"][1], rec["raw"][2], tol + 1e-30):
                    raise WeightsError(
                        f"raw tensor {name} is not the one this diff was made from (sum {sr.sum:.6g} vs "
                        f"{rec['raw'][1]:.6g}, norm {sr.l2:.6g} vs {rec['raw'][2]:.6g}): wrong --raw model?"
                    )
            t, _, _ = _chunked_add(r, D.iter_chunks(name, CHUNK), dt)
            del r
            st = tensor_stats(t)
            if not (math.isfinite(st.sum) and math.isfinite(st.l2)):
                raise WeightsError(f"recovered tensor {name} has NaN or Inf values: corrupted diff or raw model")
            total += st.knowlm_sum
            if rec is not None:
                tdt = parse_dtype(rec["tuned_dtype"])
                tol = 8 * _eps(tdt, dt, dinfo[name].dtype) * (st.l2 + abs(rec["raw"][2])) + 1e-6 * st.l2
                if not _same(st, rec["tuned"][1], rec["tuned"][2], tol):
                    raise WeightsError(
                        f"recovered tensor {name} does not match the tuned model the diff was made from "
                        f"(sum {st.sum:.6g} vs {rec['tuned'][1]:.6g}, norm {st.l2:.6g} vs "
                        f"{rec['tuned'][2]:.6g}): corrupted diff?"
                    )
            return t

        with staged_dir(out) as tmp:
            sums = write_shards(tmp, shards, produce, "recover")
            expected = expect_sum if expect_sum is not None else (meta or {}).get("tuned_sum")
            if expected is not None:
                tol = sum_tol if sum_tol is not None else default_sum_tol(expected)
                if meta is not None and expect_sum is None and sum_tol is None:
                    tol += sum(
                        8 * _eps(parse_dtype(v["tuned_dtype"])) * v["tuned"][2] for v in meta["tensors"].values()
                    )
                if not abs(total - expected) <= tol:
                    raise WeightsError(
                        f"integrity check failed: the recovered weights sum to {total:.4f}, expected "
                        f"{expected:.4f} (tolerance {tol:.3g}). A shard of the diff or the raw model "
                        "is corrupted, or --raw is not the right base model"
                    )
                notes.append(f"sum check passed ({total:.4f} vs {expected:.4f})")
            elif meta is None:
                notes.append("no integrity information in the diff: pass --expect-sum to check the result")
            first = next((p[0][1] for p in shards if p), None)
            write_config(D.dir, tmp, dtype=first)
            copy_side_files(D.dir, tmp)
            write_manifest(tmp, sums)
    return {
        "out": str(out),
        "tensors": sum(map(len, shards)),
        "shards": len(shards),
        "sum": total,
        "expected_sum": expected,
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
