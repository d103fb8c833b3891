"""``jobs/curate_instructions.py``: a chain of instruction selectors on Ray Data.

Input: alpaca, IEPile or ShareGPT-style records (``records.py``) in .jsonl files or JSON lists.
Output, written to a staging directory beside ``out_dir`` and swapped in whole::

    out_dir/kept.jsonl                 the kept records, in input order, each line as read (a
                                       JSON-list element re-serialised on one line; a record a
                                       selector masked is re-serialised masked)
    out_dir/dropped.jsonl              {"selector", "value", "file", "line", "record"} per dropped
                                       record: the selector and the value that dropped it
    out_dir/quarantine/malformed.jsonl {"file", "line", "reason", "record"} per unreadable line
    out_dir/manifest.json              read, malformed, dropped per selector, kept (they add up:
                                       read = malformed + dropped + kept), masked, config

How it runs. The files are cut into byte ranges on line starts (at most ``read_bytes``, about four
per CPU; a JSON list is one range), each read and parsed by one Ray Data task into rows: the
record's position ``uid`` = file index << 32 | line, the line as read, its format and view. The selectors then run in the configured order, each only
on the rows still kept:

* per-record selectors (length, mtld, cirs, language, pii): consecutive ones fused into one
  ``map_batches`` pass;
* perplexity: ``map_batches`` on an actor pool, each actor holding the model;
* exact_dedup / rouge_dedup: the dataset is materialised, a ``map_batches`` pass computes each
  kept record's key (a hash of its normalised fields; or its LSH bucket keys), only those narrow
  columns reach the driver, which decides (first in input order wins; ROUGE-L pairs are scored in
  Ray tasks, ``dedup.py``), and a ``map_batches`` pass marks the dropped rows.

Determinism: the rows keep input order through every stage (``preserve_order``) and every decision
depends on the records and ``seed`` only, not on blocks or timing, so a rerun writes byte-identical
files (values are rounded to 3 decimals; the manifest holds no times or host names).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from knowlm_ray.atomic import atomic_dir
from knowlm_ray.curate import selectors as sel
from knowlm_ray.curate.config import (
    CIRSSelector,
    CurateConfig,
    ExactDedup,
    LanguageSelector,
    LengthSelector,
    MTLDSelector,
    PerplexitySelector,
    PIISelector,
    RougeDedup,
)
from knowlm_ray.curate.records import Malformed, input_files, iter_file, plan_ranges, view

TAG = "[curate_instructions]"
ROW_SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("raw", pa.string()),  # the record as read (or masked, re-serialised)
        ("fmt", pa.string()),  # alpaca | iepile | sharegpt | "" (malformed)
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),  # "" kept, "malformed", or the label of the selector that dropped it
        ("value", pa.string()),  # JSON: the value that dropped it / the malformed reason
        ("notes", pa.string()),  # JSON list of what masking selectors did
    ]
)
ROW_WISE = (LengthSelector, MTLDSelector, CIRSSelector, LanguageSelector, PIISelector)
MALFORMED = "malformed"


def _say(msg: str) -> None:
    print(f"{TAG} {msg}", flush=True)


def uid_of(file_index: int, line: int) -> int:
    return (file_index << 32) | line


def where(uid: int, files: list[str]) -> tuple[str, int]:
    return files[uid >> 32], uid & 0xFFFFFFFF


def selector_labels(cfg: CurateConfig) -> list[str]:
    """One label per selector: its name, ``name#2`` ... for a name used again."""
    seen: dict[str, int] = {}
    out = []
    for s in cfg.selectors:
        seen[s.name] = seen.get(s.name, 0) + 1
        out.append(s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}")
    return out


# ------------------------------------------------------------------------------- reading
def parse_range(index: int, path: str, start: int, end: int, first_line: int) -> pa.Table:
    """The rows of one read task (``ROW_SCHEMA``), malformed ones marked."""
    cols: dict[str, list] = {k: [] for k in ROW_SCHEMA.names}
    for line, raw, obj, err in iter_file(Path(path), start, end, first_line):
        fmt, v = "", {"instruction": "", "input": "", "output": ""}
        if err is None:
            try:
                fmt, v = view(obj)
            except Malformed as exc:
                err = str(exc)
        for k, x in (
            ("uid", uid_of(index, line)),
            ("raw", raw),
            ("fmt", fmt),
            ("status", MALFORMED if err else ""),
            ("value", json.dumps(err, ensure_ascii=False) if err else ""),
            ("notes", ""),
            *v.items(),
        ):
            cols[k].append(x)
    return pa.table(cols, schema=ROW_SCHEMA)


def read_batch(batch: pa.Table) -> pa.Table:
    cols = [batch[c].to_pylist() for c in ("index", "path", "start", "end", "line")]
    tables = [parse_range(*task) for task in zip(*cols)]
    return pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()


# ------------------------------------------------------------------------------- per-record
def _rows(batch: pa.Table) -> list[dict]:
    return batch.cast(ROW_SCHEMA).to_pylist()


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def apply_row_wise(batch: pa.Table, chain: list[tuple[str, dict]]) -> pa.Table:
    """map_batches UDF: the per-record selectors, in order, on the kept rows."""
    if not batch.num_rows:
        return ROW_SCHEMA.empty_table()
    parsed = [(label, _row_selector(spec)) for label, spec in chain]
    rows = _rows(batch)
    for r in rows:
        for label, s in parsed:
            if r["status"]:
                break
            v = {"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
            if isinstance(s, PIISelector):
                value, masked, what = sel.pii(json.loads(r["raw"]), s)
                if masked is not None:
                    r["raw"] = sel.dump(masked)
                    _, nv = view(masked)
                    r.update(nv)
                    notes = json.loads(r["notes"]) if r["notes"] else []
                    r["notes"] = sel.dump([*notes, {"selector": label, "masked": what}])
            elif isinstance(s, LengthSelector):
                value = sel.length(v, s)
            elif isinstance(s, MTLDSelector):
                value = sel.mtld(v, s)
            elif isinstance(s, CIRSSelector):
                value = sel.code_complexity(v, s)
            else:
                value = sel.language(v, s)
            if value is not None:
                r["status"], r["value"] = label, sel.dump(value)
    return _table(rows)


def _row_selector(spec: dict):
    from pydantic import TypeAdapter

    from knowlm_ray.curate.config import Selector

    return TypeAdapter(Selector).validate_python(spec)


# ------------------------------------------------------------------------------- perplexity
class PerplexityStage:
    """map_batches callable on an actor pool: one model per actor."""

    def __init__(self, label: str, spec: dict):
        from knowlm_ray.curate.perplexity import Scorer

        self.label, self.cfg = label, PerplexitySelector.model_validate(spec)
        self.scorer = Scorer(self.cfg.model, self.cfg.max_tokens, self.cfg.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not batch.num_rows:
            return ROW_SCHEMA.empty_table()
        rows = _rows(batch)
        live = [r for r in rows if not r["status"]]
        n = self.cfg.batch_size
        for i in range(0, len(live), n):
            chunk = live[i : i + n]
            for r, ppl in zip(chunk, self.scorer.perplexity(chunk)):
                ppl = round(ppl, 3)
                if ppl > self.cfg.max:
                    r["status"], r["value"] = self.label, sel.dump(ppl)
        return _table(rows)


# ------------------------------------------------------------------------------- dedup
def exact_keys(batch: pa.Table, fields: list[str]) -> pa.Table:
    """map_batches UDF: (uid, key) of the kept rows."""
    uids, keys = [], []
    for r in _rows(batch) if batch.num_rows else []:
        if not r["status"]:
            uids.append(r["uid"])
            keys.append(hashlib.blake2b(sel.normalised(r, fields).encode("utf-8"), digest_size=16).digest())
    return pa.table({"uid": pa.array(uids, pa.int64()), "key": pa.array(keys, pa.binary())})


def rouge_keys(batch: pa.Table, spec: dict, seed: int) -> pa.Table:
    """map_batches UDF: (uid, LSH bucket keys as bytes) of the kept rows."""
    from knowlm_ray.curate.dedup import bucket_keys

    cfg = RougeDedup.model_validate(spec)
    live = [r for r in (_rows(batch) if batch.num_rows else []) if not r["status"]]
    keys = bucket_keys([sel.joined(r, cfg.fields) for r in live], cfg, seed)
    return pa.table(
        {
            "uid": pa.array([r["uid"] for r in live], pa.int64()),
            "keys": pa.array([k.tobytes() for k in keys], pa.binary()),
        }
    )


def texts_of(batch: pa.Table, wanted_ref: list, fields: list[str]) -> pa.Table:
    """map_batches UDF: (uid, compared text) of the wanted rows."""
    import ray

    wanted = ray.get(wanted_ref[0])
    rows = [r for r in (_rows(batch) if batch.num_rows else []) if r["uid"] in wanted]
    return pa.table(
        {"uid": pa.array([r["uid"] for r in rows], pa.int64()), "text": [sel.joined(r, fields) for r in rows]}
    )


def mark_rows(batch: pa.Table, label: str, marks: dict[int, str]) -> pa.Table:
    """Plain core: the kept rows whose uid is in ``marks`` are dropped by ``label`` with its value."""
    if not batch.num_rows:
        return ROW_SCHEMA.empty_table()
    if not marks:
        return batch.cast(ROW_SCHEMA)
    rows = _rows(batch)
    for r in rows:
        if not r["status"] and r["uid"] in marks:
            r["status"], r["value"] = label, marks[r["uid"]]
    return _table(rows)


def mark(batch: pa.Table, label: str, marks_ref: list) -> pa.Table:
    """map_batches UDF: ``mark_rows`` with the marks from the object store (one put, every task)."""
    import ray

    return mark_rows(batch, label, ray.get(marks_ref[0]))


def _pull(ds) -> pa.Table:
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def _score_chunk(pairs: list[tuple[int, int]], texts: dict[int, str], threshold: float):
    from knowlm_ray.curate.dedup import score_pairs

    return score_pairs(pairs, texts, threshold)


def _exact_marks(ds, cfg: ExactDedup, files: list[str]) -> dict[int, str]:
    t = _pull(ds.map_batches(exact_keys, fn_kwargs={"fields": cfg.fields}, batch_format="pyarrow"))
    if t is None:
        return {}
    t = t.sort_by("uid")
    first: dict[bytes, int] = {}
    marks = {}
    for uid, key in zip(t["uid"].to_pylist(), t["key"].to_pylist()):
        if key in first:
            f, line = where(first[key], files)
            marks[uid] = sel.dump({"of": f"{f}:{line}"})
        else:
            first[key] = uid
    return marks


def _rouge_marks(ds, cfg: RougeDedup, seed: int, files: list[str], ray, stats: dict) -> dict[int, str]:
    import numpy as np

    from knowlm_ray.curate.dedup import candidate_pairs, dedup_params, greedy_drops

    bands, _ = dedup_params(cfg)
    t = _pull(ds.map_batches(rouge_keys, fn_kwargs={"spec": cfg.model_dump(), "seed": seed}, batch_format="pyarrow"))
    if t is None:
        return {}
    uids = t["uid"].to_numpy()
    keys = np.frombuffer(b"".join(t["keys"].to_pylist()), dtype=np.int64).reshape(len(uids), bands)
    pairs = sorted(candidate_pairs(uids, keys, cfg.max_bucket_compare))
    wanted = {u for p in pairs for u in p}
    texts: dict[int, str] = {}
    if wanted:
        got = _pull(
            ds.map_batches(
                texts_of, fn_kwargs={"wanted_ref": [ray.put(wanted)], "fields": cfg.fields}, batch_format="pyarrow"
            )
        )
        texts = dict(zip(got["uid"].to_pylist(), got["text"].to_pylist()))
    n_tasks = max(1, min(len(pairs) // 2000, 4 * int(ray.cluster_resources().get("CPU", 1))))
    task = ray.remote(num_cpus=1)(_score_chunk)
    refs = []
    for k in range(n_tasks):
        chunk = pairs[k::n_tasks]
        if chunk:
            refs.append(task.remote(chunk, {u: texts[u] for p in chunk for u in p}, cfg.threshold))
    edges = [e for part in ray.get(refs) for e in part]
    stats.update(
        {"records": len(uids), "candidate_pairs": len(pairs), "rouge_computations": len(pairs), "edges": len(edges)}
    )
    marks = {}
    for b, (a, r) in greedy_drops(edges).items():
        f, line = where(a, files)
        marks[b] = sel.dump({"of": f"{f}:{line}", "rouge_l": round(r, 3)})
    return marks


# ------------------------------------------------------------------------------- the job
def _stages(cfg: CurateConfig) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Consecutive per-record selectors grouped into one stage; the others alone."""
    stages: list[tuple[str, list[tuple[str, Any]]]] = []
    for label, s in zip(selector_labels(cfg), cfg.selectors):
        kind = "row" if isinstance(s, ROW_WISE) else s.name
        if kind == "row" and stages and stages[-1][0] == "row":
            stages[-1][1].append((label, s))
        else:
            stages.append((kind, [(label, s)]))
    return stages


def _write_outputs(ds, staging: Path, files: list[str], labels: list[str]) -> dict[str, Any]:
    (staging / "quarantine").mkdir()
    counts = {"read": 0, MALFORMED: 0, "kept": 0, "dropped": dict.fromkeys(labels, 0)}
    masked: dict[str, dict[str, int]] = {}
    with (
        open(staging / "kept.jsonl", "w", encoding="utf-8") as kept,
        open(staging / "dropped.jsonl", "w", encoding="utf-8") as dropped,
        open(staging / "quarantine" / "malformed.jsonl", "w", encoding="utf-8") as bad,
    ):
        last = -1
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for r in _rows(batch) if batch.num_rows else []:
                if r["uid"] <= last:
                    raise RuntimeError("curate: rows out of input order (preserve_order is off?)")
                last = r["uid"]
                counts["read"] += 1
                f, line = where(r["uid"], files)
                if r["status"] == MALFORMED:
                    counts[MALFORMED] += 1
                    rec = {"file": f, "line": line, "reason": json.loads(r["value"]), "record": r["raw"][:2000]}
                    bad.write(sel.dump(rec) + "\n")
                elif r["status"]:
                    counts["dropped"][r["status"]] += 1
                    rec = {"selector": r["status"], "value": json.loads(r["value"]), "file": f, "line": line}
                    dropped.write(sel.dump({**rec, "record": json.loads(r["raw"])}) + "\n")
                else:
                    counts["kept"] += 1
                    kept.write(r["raw"] + "\n")
                for note in json.loads(r["notes"]) if r["notes"] else []:
                    m = masked.setdefault(note["selector"], {"records": 0})
                    m["records"] += 1
                    for part in note["masked"].split(", "):
                        kind, n = part.split(" ")
                        m[kind] = m.get(kind, 0) + int(n)
    counts["masked"] = masked
    return counts


def _file_info(files: list[str]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out.append({"file": f, "sha256": h.hexdigest()})
    return out


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Run the chain (Ray already started, as the job entry does) and write ``cfg.out_dir``."""
    import ray
    import ray.data

    from knowlm_ray.runtime import quiet_busy_cpu_warning, start_data_actors

    t0 = time.perf_counter()
    files = [str(f) for f in input_files(cfg.inputs)]
    labels = selector_labels(cfg)
    if any(Path(f).resolve() == Path(cfg.out_dir) or Path(cfg.out_dir) in Path(f).resolve().parents for f in files):
        from knowlm_ray.config import ConfigError

        raise ConfigError(f"out_dir {cfg.out_dir} holds an input file; it is replaced whole: pick another")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # kept.jsonl in input order, byte-identical reruns
    start_data_actors()
    quiet_busy_cpu_warning()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    _say(f"{len(files)} input file(s), selectors: {', '.join(labels) or 'none'}")
    total = sum(Path(f).stat().st_size for f in files)
    target = max(1 << 16, min(cfg.read_bytes, -(-total // (4 * cpus))))  # ~4 tasks per CPU, at most read_bytes
    tasks = plan_ranges([Path(f) for f in files], target)
    items = [dict(zip(("index", "path", "start", "end", "line"), t)) for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(read_batch, batch_size=1, batch_format="pyarrow")
    stats: dict[str, dict] = {}
    for kind, group in _stages(cfg):
        names = ", ".join(label for label, _ in group)
        if kind == "row":
            chain = [(label, s.model_dump()) for label, s in group]
            ds = ds.map_batches(apply_row_wise, fn_kwargs={"chain": chain}, batch_format="pyarrow")
        elif kind == "perplexity":
            (label, s) = group[0]
            ds = ds.map_batches(
                PerplexityStage,
                fn_constructor_kwargs={"label": label, "spec": s.model_dump()},
                compute=ray.data.ActorPoolStrategy(size=s.num_actors),
                num_cpus=s.cpus_per_actor,
                batch_size=s.batch_size * 4,
                batch_format="pyarrow",
            )
        else:
            (label, s) = group[0]
            ds = ds.materialize()
            if kind == "exact_dedup":
                marks = _exact_marks(ds, s, files)
            else:
                stats[label] = {}
                marks = _rouge_marks(ds, s, cfg.seed, files, ray, stats[label])
            ds = ds.map_batches(mark, fn_kwargs={"label": label, "marks_ref": [ray.put(marks)]}, batch_format="pyarrow")
            _say(f"{names}: {len(marks)} dropped" + (f" ({stats[label]})" if label in stats else ""))
    with atomic_dir(cfg.out_dir) as staging:
        counts = _write_outputs(ds, staging, files, labels)
        manifest = {
            "read": counts["read"],
            "malformed": counts[MALFORMED],
            "dropped": counts["dropped"],
            "kept": counts["kept"],
            "masked": counts["masked"],
            "rouge_dedup": stats,
            "inputs": _file_info(files),
            "config": cfg.model_dump(),
        }
        with open(staging / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, ensure_ascii=False, indent=1)
            fh.write("\n")
    elapsed = time.perf_counter() - t0
    _say(f"{counts['read']} records in {elapsed:.1f}s ({counts['read'] / max(elapsed, 1e-9):.0f}/s)")
    sys.stdout.flush()
    return manifest


def summary_line(manifest: dict, out_dir: str) -> str:
    dropped = ", ".join(f"{k} {v}" for k, v in manifest["dropped"].items())
    return (
        f"curate_instructions: {manifest['read']} read, {manifest['malformed']} malformed, dropped "
        f"{sum(manifest['dropped'].values())} ({dropped or 'no selectors'}) -> {manifest['kept']} kept in "
        f"{Path(out_dir) / 'kept.jsonl'}"
    )
