"""Corpus pipeline benchmark: throughput at 1 and 2 CPUs vs a plain Python loop, dedup precision
and recall against planted duplicates, packing fill, short-tail handling, MinHash vs naive.

    .venv/bin/python benchmarks/corpus.py [--docs 200000] [--seed 0] [--cpus 1,2] [--repeat 1]
        [--subset 1500] [--tail-docs 20000] [--threshold 0.8] [--tokenizer DIR]
        [--out benchmarks/results/corpus.md]

1. **Synthetic corpus** (seeded, ``--docs`` documents in KnowLM's 5.5 : 1.5 : 0.9 zh : en : code
   mix, jsonl files of 20,000 lines). Prose documents are 3-8 (en) / 4-9 (zh) sentences drawn
   from data/sample, with about 15% of the words (en) or 10% of the characters (zh) replaced at
   random so unrelated documents share few shingles; code documents are 2-6 generated Python
   functions (random names, literals, docstrings). Planted at known rates: 4% exact duplicates (a
   copy of an earlier document, whitespace changed), 4% near duplicates (a copy with a few words
   or characters replaced: as many edits as give a 5-gram Jaccard of 0.85-0.97 with the source),
   2% junk (symbol soup, phone numbers, repeated lines, stubs), 0.5% malformed JSON lines.
2. **Pipeline** (``knowlm_ray.corpus.pipeline.run``, tiny_corpus.yaml filters, near dedup on,
   ``pack.mode: none``, ``max_tokens`` 256) in a fresh Ray of 1 and of 2 CPUs (one subprocess
   each, ``--repeat`` times interleaved, best reported; wall time of ``run`` only, Ray start-up
   excluded), and the same stages as a plain single-process loop (no Ray; one shard written):
   the baseline. documents/s = documents read / s; MB/s = input bytes / s. The planted truth
   gives near-dup precision and recall of the pipeline's output.
3. **Packing fill** (real tokens / token slots) of the 1-CPU run's samples: ``none`` (one sample
   per row, micro-batches of 8 random rows padded to their longest), naive pad-to-max (every row
   padded to ``max_tokens``, KnowLM's fixed-length case), ``greedy`` (``pack_greedy`` over each
   shard, exactly what ``pack.mode: greedy`` writes; ``split_samples`` true and false).
4. **Short tails** (``split.tail``: keep / backfill / drop) on the first ``--tail-docs`` clean
   documents: tail samples, short tails, back-filled (repeated) tokens, dropped tokens, and the
   unpacked fill each option gives.
5. **Near dedup, MinHash LSH vs naive** on ``--subset`` documents (those that pass the filters and
   exact dedup), one process: naive = exact Jaccard of the shingle sets over all pairs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIX = {"zh": 5.5, "en": 1.5, "code": 0.9}  # KnowLM's pretraining mix (M samples)
LINES_PER_FILE = 20_000
MAX_TOKENS = 256
BATCH = 8  # micro-batch rows for the pad-to-longest fill


# --------------------------------------------------------------------------- synthetic corpus
def _sample_pools() -> dict[str, list[str]]:
    """Sentences of data/sample's clean prose (its own near duplicates left out)."""
    from knowlm_ray.config import CorpusConfig, load_config
    from knowlm_ray.corpus.dedup import local_near_dups
    from knowlm_ray.corpus.filters import filter_reason, load_blocklist
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows
    from knowlm_ray.corpus.split import split_sentences

    cfg = load_config(CorpusConfig, REPO / "jobs" / "configs" / "tiny_corpus.yaml", ["tokenizer=x"])
    cfg = cfg.model_copy(
        update={"inputs": [s.model_copy(update={"path": str(REPO / s.path)}) for s in cfg.inputs if s.lang != "code"]}
    )
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    rows = []
    for e in list_input_files(cfg.inputs):
        src = cfg.inputs[e["input"]]
        rows += [
            r
            for r in read_file_rows(e, src)
            if r["status"] == "ok" and not filter_reason(r["text"], cfg.filters, r["lang"], terms)
        ]
    near = local_near_dups(rows, cfg.dedup)
    keep = [r for r in rows if r["doc_id"] not in near]
    return {
        "zh": [
            s
            for r in keep
            if r["lang"] == "zh"
            for s in split_sentences(r["text"].split("\n", 1)[-1], "zh")
            if len(s) > 8
        ],
        "en": [
            s.strip() + " " for r in keep if r["lang"] == "en" for s in split_sentences(r["text"], "en") if len(s) > 30
        ],
    }


def _junk(rng: random.Random, lang: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice("★☆#@%$&*^~◆■※|+=<>") for _ in range(rng.randint(40, 120)))
    if kind == 1:
        return " ".join(
            f"{rng.randint(130, 189)}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
            for _ in range(rng.randint(8, 20))
        )
    if kind == 2:
        line = "点击这里免费领取优惠券，限时抢购！" if lang == "zh" else "Click here to win a free gift card now!"
        return "\n".join([line] * rng.randint(8, 25))
    return rng.choice(["无标题", "TBD", "待补充", "Stub."])


def _mutate(text: str, lang: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    if lang == "zh":
        return "".join(rng.choice(vocab) if "\u4e00" <= c <= "\u9fff" and rng.random() < rate else c for c in text)
    return " ".join(rng.choice(vocab) if rng.random() < rate else w for w in text.split(" "))


def _near_copy(text: str, lang: str, target: float, rng: random.Random, vocab: list[str]) -> tuple[str, int]:
    """A copy with a few random word (en, code) or character (zh) replacements, as many as bring
    the 5-gram Jaccard with the original to about ``target`` (each edit changes up to 5 shingles)."""
    units = list(text) if lang == "zh" else text.split(" ")
    edits = max(1, round(len(units) * (1 - target) / (5 * (1 + target))))
    done = 0
    for i in rng.sample(range(len(units)), min(edits, len(units))):
        if lang != "zh" or "\u4e00" <= units[i] <= "\u9fff":
            units[i] = rng.choice(vocab)
            done += 1
    return ("".join(units) if lang == "zh" else " ".join(units)), done


def _code_doc(rng: random.Random, words: list[str]) -> str:
    """2-6 generated Python functions: random names, numbers, docstrings (distinct documents)."""

    def name() -> str:
        return "_".join(rng.choice(words).lower() for _ in range(rng.randint(1, 3)))

    funcs = []
    for _ in range(rng.randint(2, 6)):
        a, b, acc, i = name(), name() + "_b", name() + "_acc", rng.choice("ijk")
        body = [
            f"def {name()}({a}, {b}={rng.randint(0, 99)}):",
            f'    """{" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))).capitalize()}."""',
            f"    {acc} = {a} {rng.choice('+-*')} {rng.randint(1, 999)}",
        ]
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(3)
            if kind == 0:
                body += [
                    f"    for {i} in range({rng.randint(2, 64)}):",
                    f"        {acc} {rng.choice(['+=', '-=', '^='])} {b} * {i} + {rng.randint(1, 9)}",
                ]
            elif kind == 1:
                body += [f"    if {acc} > {rng.randint(10, 10_000)}:", f"        {acc} = {acc} // {rng.randint(2, 9)}"]
            else:
                body.append(f'    {name()} = "{rng.choice(words)} {rng.choice(words)}"')
        body.append(f"    return {acc}")
        funcs.append("\n".join(body))
    return "\n\n\n".join(funcs) + "\n"


def generate(out: Path, n_docs: int, seed: int) -> dict:
    """Write ``n_docs`` documents under ``out/{zh,en,code}/``; returns the planted truth."""
    from knowlm_ray.corpus.dedup import jaccard, shingles

    rng = random.Random(seed)
    pools = _sample_pools()
    vocab = {
        "zh": sorted({c for s in pools["zh"] for c in s if "\u4e00" <= c <= "\u9fff"}),
        "en": sorted({w for s in pools["en"] for w in re.findall(r"[A-Za-z]{3,}", s)}),
    }
    vocab["code"] = vocab["en"]
    truth = {
        "exact": {},
        "near": {},
        "near_jaccard": {},
        "near_edits": [],
        "junk": [],
        "malformed": [],
        "docs": 0,
        "bytes": 0,
        "by_lang": dict.fromkeys(MIX, 0),
    }
    lines = {lang: [] for lang in MIX}
    written = {lang: [] for lang in MIX}
    langs, weights = list(MIX), list(MIX.values())
    for _ in range(n_docs):
        lang = rng.choices(langs, weights=weights)[0]
        n = len(lines[lang])
        doc_id = f"{lang}/part-{n // LINES_PER_FILE:03d}.jsonl:{n % LINES_PER_FILE + 1:09d}"
        truth["by_lang"][lang] += 1
        roll = rng.random()
        title = f"T{n}"
        if roll < 0.005:
            lines[lang].append('{"title": "broken", "content": "no closing quote}')
            truth["malformed"].append(doc_id)
            continue
        if roll < 0.025:
            text = _junk(rng, "en" if lang == "code" else lang)
            truth["junk"].append(doc_id)
        elif roll < 0.065 and written[lang]:
            src_id, title, src_text = rng.choice(written[lang])
            text = src_text.replace(" ", "  ", 1) if lang != "zh" else src_text + " "  # same after NFKC + spaces
            truth["exact"][doc_id] = src_id
        elif roll < 0.105 and written[lang]:
            src_id, title, src_text = rng.choice(written[lang])
            text, edits = _near_copy(src_text, lang, rng.uniform(0.85, 0.97), rng, vocab[lang])
            truth["near"][doc_id] = src_id
            truth["near_edits"].append(edits)
            truth["near_jaccard"][doc_id] = jaccard(shingles(src_text, lang), shingles(text, lang))
        else:
            if lang == "code":
                text = _code_doc(rng, vocab["en"])
            else:
                k = rng.randint(4, 9) if lang == "zh" else rng.randint(3, 8)
                text = _mutate(
                    "".join(rng.sample(pools[lang], k)), lang, 0.10 if lang == "zh" else 0.15, rng, vocab[lang]
                )
            written[lang].append((doc_id, title, text))
        key = {"zh": "content", "en": "text", "code": "content"}[lang]
        lines[lang].append(json.dumps({"title": title, key: text}, ensure_ascii=False))
    for lang, rows in lines.items():
        (out / lang).mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, len(rows), LINES_PER_FILE)):
            chunk = rows[start : start + LINES_PER_FILE]
            (out / lang / f"part-{part:03d}.jsonl").write_text("\n".join(chunk) + "\n", encoding="utf-8")
        truth["docs"] += len(rows)
    truth["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return truth


def corpus_config(root: Path, tokenizer: str, out_dir: Path, threshold: float):
    from knowlm_ray.config import CorpusConfig, load_config

    cfg = load_config(
        CorpusConfig,
        REPO / "jobs" / "configs" / "tiny_corpus.yaml",
        [
            f"tokenizer={tokenizer}",
            f"out_dir={out_dir}",
            f"dedup.threshold={threshold}",
            f"max_tokens={MAX_TOKENS}",
            "rows_per_shard=20000",
            "pack.mode=none",
        ],
    )
    inputs = [
        {
            "path": str(root / "zh"),
            "source": "zh",
            "lang": "zh",
            "format": "jsonl",
            "glob": "*.jsonl",
            "text_field": ["title", "content"],
            "converter": "baike",
        },
        {
            "path": str(root / "en"),
            "source": "en",
            "lang": "en",
            "format": "jsonl",
            "glob": "*.jsonl",
            "text_field": ["title", "text"],
            "converter": "wiki",
        },
        {
            "path": str(root / "code"),
            "source": "code",
            "lang": "code",
            "format": "jsonl",
            "glob": "*.jsonl",
            "text_field": "content",
        },
    ]
    return CorpusConfig.model_validate({**cfg.model_dump(), "inputs": inputs})


# --------------------------------------------------------------------------- pipeline (subprocess)
def _cpu_by_role() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every process below it (Ray's raylet, GCS, agents
    and workers are children of the driver that ran ``ray.init``), by role."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        role = (
            "driver"
            if proc.pid == me.pid
            else "workers"
            if cmd.startswith("ray::") or "default_worker" in cmd
            else "ray_system"
        )
        out[proc.pid] = (role, t.user + t.system)
    return out


class CpuMeter:
    """Core-seconds per role over a block: ``_cpu_by_role`` polled every ``every`` seconds from a
    thread, keeping each process's last reading, because Ray ends idle workers beyond its pool
    while a run goes on (only a process living under ``every`` seconds is missed)."""

    def __init__(self, every: float = 0.25):
        import threading

        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.spent: dict[str, float] = {}

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(_cpu_by_role())

    def __enter__(self) -> CpuMeter:
        self.first = _cpu_by_role()
        self.last = dict(self.first)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(_cpu_by_role())
        self.spent = dict.fromkeys(("driver", "workers", "ray_system"), 0.0)
        for pid, (role, cpu) in self.last.items():
            self.spent[role] += cpu - self.first.get(pid, (role, 0.0))[1]


def _pipeline_child(args) -> None:
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    from knowlm_ray.corpus.pipeline import run
    from knowlm_ray.runtime import init_ray

    ray = init_ray(num_cpus=args.child_cpus, object_store_mb=2048)
    cfg = corpus_config(Path(args.child_root), args.tokenizer, Path(args.child_out), args.threshold)
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        manifest = run(cfg)
        wall = time.perf_counter() - t0
    cpu = meter.spent
    dropped = [
        json.loads(line)
        for f in sorted((Path(args.child_out) / "dropped").glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
    ]
    gone = {d["doc_id"]: d["status"] for d in dropped}
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "stages": manifest["stages"],
                "filters": manifest["filters"],
                "stats": manifest["stats"],
                "near_dedup": manifest["near_dedup"],
                "gone": gone,
            }
        )
    )
    ray.shutdown()


def run_pipeline(root: Path, tokenizer: str, cpus: int, threshold: float, work: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child-cpus",
        str(cpus),
        "--child-root",
        str(root),
        "--child-out",
        str(work / f"out{cpus}"),
        "--tokenizer",
        tokenizer,
        "--threshold",
        str(threshold),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"pipeline run with {cpus} CPUs failed:\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- plain Python baseline
def run_local(root: Path, tokenizer: str, threshold: float, out: Path) -> dict:
    """The same stages in one process with the same plain-Python cores, no Ray: the baseline."""
    import pyarrow as pa

    from knowlm_ray.corpus.dedup import local_near_dups
    from knowlm_ray.corpus.filters import dedup_key, filter_reason, load_blocklist
    from knowlm_ray.corpus.samples import doc_to_sample_rows, load_tokenizer
    from knowlm_ray.corpus.schema import SHARD_SCHEMA
    from knowlm_ray.corpus.shards import write_arrow_file
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = corpus_config(root, tokenizer, out, threshold)
    t0, c0 = time.perf_counter(), time.process_time()
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    tok = load_tokenizer(tokenizer)
    stages = dict.fromkeys(
        ("read", "malformed", "filtered", "exact_dups", "near_dups", "documents", "samples", "tokens"), 0
    )
    docs, seen = [], set()
    rows = sorted(
        (r for e in list_input_files(cfg.inputs) for r in read_file_rows(e, cfg.inputs[e["input"]])),
        key=lambda r: r["doc_id"],
    )
    for r in rows:
        stages["read"] += 1
        if r["status"] != "ok":
            stages["malformed"] += 1
        elif filter_reason(r["text"], cfg.filters, r["lang"], terms):
            stages["filtered"] += 1
        elif (key := dedup_key(r["text"])) in seen:
            stages["exact_dups"] += 1
        else:
            seen.add(key)
            docs.append(r)
    del rows
    near = local_near_dups(docs, cfg.dedup, cfg.seed)
    stages["near_dups"] = len(near)
    samples = []
    for d in docs:
        if d["doc_id"] in near:
            continue
        stages["documents"] += 1
        for s in doc_to_sample_rows(d, tok, cfg.max_tokens, cfg.min_tokens):
            if s["status"] == "ok":
                samples.append({"input_ids": s["input_ids"], "doc_id": s["doc_id"], "source": s["source"]})
    stages["samples"] = len(samples)
    stages["tokens"] = sum(len(s["input_ids"]) for s in samples)
    out.mkdir(parents=True, exist_ok=True)
    write_arrow_file(pa.Table.from_pylist(samples, schema=SHARD_SCHEMA), out / "part-00000.arrow")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "stages": stages}


# --------------------------------------------------------------------------- packing fill
def packing_fill(out_dir: Path, seed: int) -> dict:
    """Fill of the pipeline's (unpacked) samples under each packing choice."""
    import numpy as np

    from knowlm_ray.corpus.pack import pack_greedy
    from knowlm_ray.corpus.shards import ShardReader, shard_files

    lengths = ShardReader(out_dir).lengths()
    tokens = int(lengths.sum())
    perm = np.random.default_rng(seed).permutation(len(lengths))
    batches = [lengths[perm[i : i + BATCH]] for i in range(0, len(perm), BATCH)]
    res = {
        "samples": len(lengths),
        "tokens": tokens,
        "none": tokens / sum(len(b) * int(b.max()) for b in batches),
        "pad_to_max": tokens / (len(lengths) * MAX_TOKENS),
    }
    import pyarrow as pa

    for split in (True, False):
        rows = slots = 0
        t0 = time.perf_counter()
        for f in shard_files(out_dir):  # packing runs per shard, as in the pipeline
            packed = pack_greedy(pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all(), MAX_TOKENS, split)
            rows += packed.num_rows
            slots += packed.num_rows * MAX_TOKENS
        res[f"greedy_{'split' if split else 'whole'}"] = tokens / slots
        res[f"greedy_{'split' if split else 'whole'}_rows"] = rows
        res[f"greedy_{'split' if split else 'whole'}_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- short tails
def tail_modes(root: Path, tokenizer: str, threshold: float, n_docs: int) -> dict:
    """split.tail keep / backfill / drop on the first ``n_docs`` clean documents."""
    from knowlm_ray.corpus.filters import filter_reason, load_blocklist
    from knowlm_ray.corpus.samples import load_tokenizer
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows
    from knowlm_ray.corpus.split import build_samples, encode_sentences, short_tail_tokens, split_sentences

    cfg = corpus_config(root, tokenizer, root / "unused", threshold)
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    tok = load_tokenizer(tokenizer)
    encoded = []
    for e in list_input_files(cfg.inputs):
        for r in read_file_rows(e, cfg.inputs[e["input"]]):
            if len(encoded) >= n_docs * (e["input"] + 1) // len(cfg.inputs):
                break
            if r["status"] == "ok" and not filter_reason(r["text"], cfg.filters, r["lang"], terms):
                encoded.append(encode_sentences(tok, split_sentences(r["text"], r["lang"])))
    short = short_tail_tokens(MAX_TOKENS, cfg.split.short_tail)
    out = {"docs": len(encoded), "short_below": short}
    for mode in ("keep", "backfill", "drop"):
        samples = tails = short_tails = backfill = dropped = tokens = 0
        for sents in encoded:
            b = build_samples(sents, MAX_TOKENS, tok.bos_token_id, tok.eos_token_id, tail=mode, short_tail=short)
            samples += len(b.samples)
            tokens += sum(len(s) for s in b.samples)
            if len(b.samples) > 1:
                tails += 1
                short_tails += len(b.samples[-1]) < short
            backfill += b.backfill_tokens
            dropped += len(b.dropped_tail or [])
        out[mode] = {
            "samples": samples,
            "tails": tails,
            "short_tails": short_tails,
            "backfill_tokens": backfill,
            "dropped_tokens": dropped,
            "tokens": tokens,
            "pad_to_max_fill": tokens / (samples * MAX_TOKENS),
        }
    return out


# --------------------------------------------------------------------------- MinHash vs naive
def near_benchmark(root: Path, subset: int, threshold: float, seed: int) -> dict:
    from knowlm_ray.config import DedupConfig
    from knowlm_ray.corpus.dedup import (
        bucket_pairs,
        bucket_rows,
        connected_components,
        doc_signature,
        lsh_params,
        shingles,
        verify,
    )
    from knowlm_ray.corpus.filters import dedup_key, filter_reason, load_blocklist
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = corpus_config(root, "x", root / "unused", threshold)
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    docs, seen = [], set()
    for e in list_input_files(cfg.inputs):
        if len(docs) >= subset * (e["input"] + 1) // len(cfg.inputs):
            continue  # a share of the subset per source, from each source's first files
        for r in read_file_rows(e, cfg.inputs[e["input"]]):
            if r["status"] != "ok" or filter_reason(r["text"], cfg.filters, r["lang"], terms):
                continue
            k = dedup_key(r["text"])
            if k not in seen:
                seen.add(k)
                docs.append(r)
            if len(docs) >= subset * (e["input"] + 1) // len(cfg.inputs):
                break
    docs = sorted(docs, key=lambda r: r["doc_id"])
    dcfg = DedupConfig(near=True, threshold=threshold)

    t0 = time.perf_counter()
    sets = [shingles(d["text"], d["lang"], dcfg.ngram, dcfg.char_ngram) for d in docs]
    truth = set()
    for i, j in itertools.combinations(range(len(docs)), 2):
        a, b = sets[i], sets[j]
        if a and b and len(a & b) >= threshold * len(a | b):
            truth.add((docs[i]["doc_id"], docs[j]["doc_id"]))
    naive_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    bands, rows = lsh_params(dcfg)
    sigs = {d["doc_id"]: doc_signature(d["text"], d["lang"], dcfg, seed) for d in docs}
    pairs_t = bucket_pairs(bucket_rows(list(sigs), None, list(sigs.values()), bands, rows), dcfg.max_bucket_compare)
    candidates = sorted({(a, b) for a, b in zip(pairs_t["a"].to_pylist(), pairs_t["b"].to_pylist()) if a is not None})
    found = set(verify(candidates, lambda ids: {i: sigs[i] for i in ids}, threshold))
    minhash_s = time.perf_counter() - t0
    comparisons = pairs_t["collisions"][-1].as_py()

    tp = len(found & truth)
    true_dups = set(connected_components(sorted(truth)))
    got_dups = set(connected_components(sorted(found)))
    return {
        "docs": len(docs),
        "pairs": len(docs) * (len(docs) - 1) // 2,
        "true_pairs": len(truth),
        "found_pairs": len(found),
        "pair_precision": tp / len(found) if found else 1.0,
        "pair_recall": tp / len(truth) if truth else 1.0,
        "doc_precision": len(got_dups & true_dups) / len(got_dups) if got_dups else 1.0,
        "doc_recall": len(got_dups & true_dups) / len(true_dups) if true_dups else 1.0,
        "naive_s": naive_s,
        "minhash_s": minhash_s,
        "bands": bands,
        "rows": rows,
        "bucket_pairs": comparisons,
    }


# --------------------------------------------------------------------------- machine probe
def _burn(n: int) -> float:
    t = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i
    return time.perf_counter() - t


def effective_cores(n: int = 10_000_000) -> float:
    """How many cores two CPU-bound processes actually get right now (2.0 on an idle 2-core box;
    less when other jobs share it): the ceiling for any 2-CPU speed-up measured here."""
    import multiprocessing as mp

    one = _burn(n)
    with mp.Pool(2) as pool:
        t = time.perf_counter()
        pool.map(_burn, [n, n])
        two = time.perf_counter() - t
    return 2 * one / two


def _sample_work(root: str, tokenizer: str, threshold: float, n: int) -> float:
    """Seconds of the pipeline's own per-document work (read + convert, filters, MinHash
    signature, split + tokenise) on the first ``n`` documents of each source, in this process."""
    import pyarrow as pa

    from knowlm_ray.corpus.dedup import sign_batch
    from knowlm_ray.corpus.filters import annotate_batch
    from knowlm_ray.corpus.samples import docs_to_samples, load_tokenizer
    from knowlm_ray.corpus.schema import DOC_SCHEMA
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = corpus_config(Path(root), tokenizer, Path(root) / "unused", threshold)
    tok = load_tokenizer(tokenizer)
    t = time.perf_counter()
    for src in cfg.inputs:
        rows = itertools.islice((r for e in list_input_files([src]) for r in read_file_rows(e, src)), n)
        batch = annotate_batch(pa.Table.from_pylist(list(rows), schema=DOC_SCHEMA), cfg.filters.model_dump())
        batch = sign_batch(batch, cfg.dedup.model_dump(), cfg.seed)
        for k in range(0, batch.num_rows, 64):
            docs_to_samples(batch.slice(k, 64), tok, cfg.max_tokens, cfg.min_tokens)
    return time.perf_counter() - t


def workload_cores(root: Path, tokenizer: str, threshold: float, n: int = 3000) -> float:
    """The same probe with the pipeline's own work instead of an arithmetic loop: it also feels
    what two busy processes cost each other in caches and memory bandwidth (an arithmetic loop
    does not), so it is the ceiling for this pipeline's 2-CPU speed-up on this box right now."""
    import multiprocessing as mp

    args = (str(root), tokenizer, threshold, n)
    ctx = mp.get_context("spawn")  # fresh interpreters, like Ray's workers
    with ctx.Pool(1) as pool:
        one = pool.apply(_sample_work, args)
    with ctx.Pool(2) as pool:
        two = max(pool.starmap(_sample_work, [args, args]))
    return 2 * one / two


# --------------------------------------------------------------------------- report
def dedup_quality(truth: dict, gone: dict[str, str], threshold: float) -> dict:
    """The pipeline's near-dup marks against the planted truth. A planted near copy that its
    random edits left unchanged after normalisation (Jaccard 1) is an exact duplicate: not counted."""
    planted = {d for d, j in truth["near_jaccard"].items() if j < 1.0}
    marked = {d for d, s in gone.items() if s == "near_dup"}
    detectable = {d for d in planted if truth["near_jaccard"][d] >= threshold}
    planted_gone = set(truth["near"]) | set(truth["exact"]) | set(truth["junk"]) | set(truth["malformed"])
    return {
        "planted": len(planted),
        "marked": len(marked),
        "caught": len(planted & marked),
        "recall": len(planted & marked) / max(1, len(planted)),
        "precision": len(planted & marked) / max(1, len(marked)),
        "detectable": len(detectable),
        "caught_detectable": len(detectable & marked),
        "exact_caught": sum(1 for d in truth["exact"] if gone.get(d) == "exact_dup"),
        "wrongly_removed": sorted(d for d in gone if d not in planted_gone),
    }


def report(args, truth, gen_s, runs, walls, local, cores, fill, tails, near) -> str:
    first = runs[min(runs)]
    q = dedup_quality(truth, first["gone"], args.threshold)
    st = first["stages"]
    edits = truth["near_edits"]
    cmd = (
        f".venv/bin/python benchmarks/corpus.py --docs {args.docs} --seed {args.seed} --cpus {args.cpus} "
        f"--repeat {args.repeat} --subset {args.subset} --tail-docs {args.tail_docs} --threshold {args.threshold}"
    )
    lines = [
        "# Corpus pipeline benchmark",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs while this ran (load "
        f"average at the end {os.getloadavg()[0]:.1f}); effective cores for two CPU-bound processes "
        f"{cores[0]:.2f} before and {cores[1]:.2f} after the pipeline runs (2.00 on an idle 2-core box; snapshots: "
        "the load changed during the runs, so the ratios carry that noise); the same probe running the "
        f"pipeline's own per-document work in one process and in two at once: {cores[2]:.2f} before and "
        f"{cores[3]:.2f} after (two of our processes slow each other down: this is the ceiling of the "
        "2-CPU speed-up here). Wall time of `pipeline.run` in a fresh Ray per CPU count (Ray start excluded).",
        "",
        f"Synthetic corpus (seed {args.seed}, generated in {gen_s:.0f}s): {truth['docs']:,} documents "
        f"(zh {truth['by_lang']['zh']:,}, en {truth['by_lang']['en']:,}, code {truth['by_lang']['code']:,}), "
        f"{truth['bytes'] / 1e6:.1f} MB; planted {len(truth['exact']):,} exact and {len(truth['near']):,} near "
        f"duplicates ({sum(edits) / max(1, len(edits)):.1f} edited words/characters on average, "
        f"{min(edits, default=0)}-{max(edits, default=0)}), {len(truth['junk']):,} junk, "
        f"{len(truth['malformed']):,} malformed lines.",
        "",
        "## Throughput (read, convert, filter, exact + MinHash dedup, split, tokenise, shard)",
        "",
        "| run | wall s (best; all runs) | documents/s | MB/s | tokens/s | vs 1 CPU | vs plain loop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = runs[min(runs)]["wall_s"]
    for cpus, r in sorted(runs.items()):
        s = r["stages"]
        lines.append(
            f"| Ray Data, {cpus} CPU{'s' if cpus > 1 else ''} | {r['wall_s']:.1f} "
            f"({', '.join(f'{w:.1f}' for w in walls[cpus])}) | {s['read'] / r['wall_s']:.0f} | "
            f"{truth['bytes'] / 1e6 / r['wall_s']:.2f} | {s['tokens'] / r['wall_s']:.0f} | "
            f"{base / r['wall_s']:.2f}x | {local['wall_s'] / r['wall_s']:.2f}x |"
        )
    s = local["stages"]
    lines.append(
        f"| plain Python loop, 1 process, no Ray (baseline) | {local['wall_s']:.1f} | "
        f"{s['read'] / local['wall_s']:.0f} | {truth['bytes'] / 1e6 / local['wall_s']:.2f} | "
        f"{s['tokens'] / local['wall_s']:.0f} | {base / local['wall_s']:.2f}x | 1.00x |"
    )
    lines += [
        "",
        "Where the CPU went (core-seconds over each run by process role: the driver runs the streaming "
        "executor and the dedup resolution, Ray's system processes are raylet, GCS and agents; Ray's N "
        "CPUs bound its workers only, so the driver and system time come on top; the last column is what "
        "per core means here):",
        "",
        "| run | workers | driver | Ray system | all | workers' share of N x wall | CPU s per 1k documents |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cpus, r in sorted(runs.items()):
        c = r.get("cpu_s")
        if c:
            total = sum(c.values())
            lines.append(
                f"| Ray Data, {cpus} CPU{'s' if cpus > 1 else ''} | {c['workers']:.1f} | {c['driver']:.1f} | "
                f"{c['ray_system']:.1f} | {total:.1f} | {c['workers'] / (cpus * r['wall_s']):.0%} | "
                f"{1000 * total / r['stages']['read']:.2f} |"
            )
    lines.append(
        f"| plain Python loop | {local['cpu_s']:.1f} | | | {local['cpu_s']:.1f} | | "
        f"{1000 * local['cpu_s'] / local['stages']['read']:.2f} |"
    )
    same = len({json.dumps(r["stages"], sort_keys=True) for r in runs.values()}) == 1
    same_local = all(local["stages"][k] == st[k] for k in local["stages"])
    lines += [
        "",
        f"Stage counts ({'identical for every CPU count' if same else 'DIFFER between CPU counts'}"
        f"{' and the plain loop' if same_local else '; the plain loop DIFFERS: ' + json.dumps(local['stages'])}): "
        f"read {st['read']:,}, malformed {st['malformed']:,}, filtered {st['filtered']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in first['filters'].items() if v)}), exact dups {st['exact_dups']:,}, "
        f"near dups {st['near_dups']:,}, documents {st['documents']:,}, samples {st['samples']:,}, "
        f"tokens {st['tokens']:,}.",
        "",
        "## Dedup against the planted truth",
        "",
        f"Near duplicates (threshold {args.threshold}, {first['near_dedup']['bands']} bands x "
        f"{first['near_dedup']['rows']} rows, {first['near_dedup']['edges']:,} verified edges): "
        f"**recall {q['recall']:.3f}** ({q['caught']:,}/{q['planted']:,} planted near copies removed; "
        f"{q['caught_detectable']:,}/{q['detectable']:,} of those with shingle Jaccard >= {args.threshold}), "
        f"**precision {q['precision']:.3f}** ({q['caught']:,} of {q['marked']:,} documents marked near-dup were "
        f"planted; goal: recall >= 0.9 at precision >= 0.98). Exact duplicates removed: "
        f"{q['exact_caught']:,}/{len(truth['exact']):,}. Clean documents removed by any stage: "
        f"{len(q['wrongly_removed'])}{' (' + ', '.join(q['wrongly_removed'][:5]) + ')' if q['wrongly_removed'] else ''}.",
        "",
        f"## Packing fill (real tokens / token slots; {fill['samples']:,} samples, {fill['tokens']:,} tokens, "
        f"max_tokens {MAX_TOKENS})",
        "",
        "| packing | rows | fill |",
        "|---|---:|---:|",
        f"| naive pad-to-max (every row padded to max_tokens) | {fill['samples']:,} | {fill['pad_to_max']:.1%} |",
        f"| `pack.mode: none` (micro-batches of {BATCH} random rows, padded to their longest) | {fill['samples']:,} | "
        f"{fill['none']:.1%} |",
        f"| `pack.mode: greedy` (`split_samples: true`, the default) | {fill['greedy_split_rows']:,} | "
        f"**{fill['greedy_split']:.1%}** |",
        f"| `pack.mode: greedy`, `split_samples: false` (samples kept whole) | {fill['greedy_whole_rows']:,} | "
        f"{fill['greedy_whole']:.1%} |",
        "",
        f"Greedy packing of all shards took {fill['greedy_split_s']:.1f}s in one process (goal: fill >= 98%). "
        "Rows that are not full: the last row of each source in each shard.",
        "",
        f"## Short tails (`split.tail`, first {tails['docs']:,} clean documents, tail short under "
        f"{tails['short_below']} tokens)",
        "",
        "| split.tail | samples | multi-sample docs (tails) | short tails left | repeated tokens | dropped tokens "
        "| pad-to-max fill |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("keep", "backfill", "drop"):
        t = tails[mode]
        lines.append(
            f"| {mode}{' (default)' if mode == 'keep' else ''} | {t['samples']:,} | {t['tails']:,} | "
            f"{t['short_tails']:,} | {t['backfill_tokens']:,} | {t['dropped_tokens']:,} | "
            f"{t['pad_to_max_fill']:.1%} |"
        )
    lines += [
        "",
        "keep trains every token once; backfill (KnowLM) fills short tails with repeated sentences, which only "
        "pays without packing; drop loses the text. With `pack.mode: greedy` the tail choice does not change "
        "the fill (see above), so keep is the default.",
        "",
        f"## Near dedup: MinHash LSH vs naive all-pairs exact Jaccard ({near['docs']:,} documents, "
        f"threshold {args.threshold})",
        "",
        "| method | pairs compared | time s | near-dup pairs | pair precision | pair recall | doc precision | "
        "doc recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| naive all pairs (exact Jaccard of shingle sets) | {near['pairs']:,} | {near['naive_s']:.2f} | "
        f"{near['true_pairs']} | 1 | 1 | 1 | 1 |",
        f"| MinHash LSH ({near['bands']}x{near['rows']}, 128 perm, verified) | {near['bucket_pairs']:,} (bucket "
        f"collisions) | {near['minhash_s']:.2f} | {near['found_pairs']} | {near['pair_precision']:.3f} | "
        f"{near['pair_recall']:.3f} | {near['doc_precision']:.3f} | {near['doc_recall']:.3f} |",
        "",
        f"MinHash is {near['naive_s'] / max(near['minhash_s'], 1e-9):.1f}x faster on this subset; naive grows "
        "with n^2, MinHash with n.",
    ]
    return "\n".join(lines) + "\n"


def _tokenizer(work: Path) -> str:
    from transformers import LlamaTokenizer

    from knowlm_ray.models.tiny import DEFAULT_CORPUS, iter_corpus_lines, train_sentencepiece

    out = work / "tok"
    out.mkdir()
    lines = list(iter_corpus_lines([REPO / p for p in DEFAULT_CORPUS]))
    (out / "tokenizer.model").write_bytes(train_sentencepiece(lines, 3000))
    tok = LlamaTokenizer.from_pretrained(out, legacy=False)
    tok.save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=200_000, help="synthetic documents to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default="1,2")
    ap.add_argument("--subset", type=int, default=1500, help="documents for the naive all-pairs comparison")
    ap.add_argument("--tail-docs", type=int, default=20_000, help="documents for the split.tail comparison")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--repeat", type=int, default=1, help="runs per CPU count, interleaved; the best is reported")
    ap.add_argument("--work", default="", help="scratch dir (default: a new temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "corpus.md"))
    ap.add_argument("--child-cpus", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-root", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_cpus:
        _pipeline_child(args)
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="corpus_bench_"))
    root = work / "corpus"
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    truth = generate(root, args.docs, args.seed)
    gen_s = time.perf_counter() - t0
    tokenizer = args.tokenizer or _tokenizer(work)
    print(
        f"synthetic corpus: {truth['docs']} documents, {truth['bytes'] / 1e6:.1f} MB in {gen_s:.1f}s "
        f"({len(truth['exact'])} exact dups, {len(truth['near'])} near dups, {len(truth['junk'])} junk, "
        f"{len(truth['malformed'])} malformed planted) -> {root}",
        flush=True,
    )

    cores_before = effective_cores(), workload_cores(root, tokenizer, args.threshold)
    print(
        f"effective cores before: {cores_before[0]:.2f} (arithmetic), {cores_before[1]:.2f} (pipeline work)", flush=True
    )
    runs: dict[int, dict] = {}
    walls: dict[int, list[float]] = {}
    for rep in range(args.repeat):
        for cpus in [int(c) for c in args.cpus.split(",")]:
            r = run_pipeline(root, tokenizer, cpus, args.threshold, work)
            walls.setdefault(cpus, []).append(r["wall_s"])
            if cpus not in runs or r["wall_s"] < runs[cpus]["wall_s"]:
                runs[cpus] = r
            print(f"pipeline, {cpus} CPU, run {rep + 1}: {r['wall_s']:.1f}s {r['stages']}", flush=True)
    local = run_local(root, tokenizer, args.threshold, work / "local")
    cores_after = effective_cores(), workload_cores(root, tokenizer, args.threshold)
    print(f"effective cores after: {cores_after[0]:.2f} (arithmetic), {cores_after[1]:.2f} (pipeline work)", flush=True)
    print(f"plain Python, 1 process: {local['wall_s']:.1f}s {local['stages']}", flush=True)
    fill = packing_fill(work / f"out{min(runs)}", args.seed)
    print(f"packing fill: {json.dumps(fill)}", flush=True)
    tails = tail_modes(root, tokenizer, args.threshold, args.tail_docs)
    print(f"tails: {json.dumps(tails)}", flush=True)
    near = near_benchmark(root, args.subset, args.threshold, args.seed)
    print(
        f"near dedup on {near['docs']} docs: naive {near['naive_s']:.1f}s, MinHash {near['minhash_s']:.2f}s", flush=True
    )
    text = report(
        args,
        truth,
        gen_s,
        runs,
        walls,
        local,
        (cores_before[0], cores_after[0], cores_before[1], cores_after[1]),
        fill,
        tails,
        near,
    )
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
