"""prepare_corpus throughput (1 vs 2 CPUs) and MinHash LSH near-dedup vs naive all-pairs Jaccard.

    .venv/bin/python benchmarks/corpus_pipeline.py [--mb 4] [--seed 0] [--cpus 1,2] [--subset 1500]
        [--threshold 0.8] [--tokenizer DIR] [--out benchmarks/results/corpus.md]

1. **Synthetic corpus** (seeded, ``--mb`` MB of jsonl/text + code files), generated from
   data/sample: every new document is a mix of sentences drawn from several sample documents, with
   about 15% of its words (English) or 10% of its characters (Chinese) replaced at random, so
   unrelated documents share few shingles. Planted at known rates: 4% exact duplicates (a copy of an
   earlier document, whitespace changed), 4% near duplicates (a copy with random word / character
   replacements, as many as give a 5-gram Jaccard of 0.85-0.97), 2% junk (symbol soup, phone numbers, repeated
   lines, stubs), 0.5% malformed JSON lines; plus the sample's code files with renamed identifiers.
2. **Pipeline** (``knowlm_ray.corpus.pipeline.run``, tiny_corpus.yaml filters, near dedup on,
   ``pack.mode: none``) in a fresh Ray of 1 and of 2 CPUs (one subprocess each, ``--repeat``
   times interleaved, best reported; wall time of ``run`` only, Ray start-up excluded), and the
   same stages as a plain single-process loop over the same cores (no Ray; one shard written).
   documents/s = documents read / s; tokens/s = tokens written / s; MB/s = input bytes / s.
   The planted truth gives near-dup precision and recall.
3. **Near dedup, MinHash LSH vs naive** on ``--subset`` documents of that corpus (the ones that pass
   the filters and exact dedup), one process: naive = exact Jaccard of the shingle sets over all
   pairs; MinHash = signatures + band buckets + verification (``knowlm_ray.corpus.dedup``).
   Precision / recall of MinHash's verified pairs and of its near-duplicate documents against the
   naive truth (pairs with Jaccard >= threshold; documents = non-representatives of the
   connected components).
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
SAMPLE = REPO / "data" / "sample"
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- synthetic corpus
def _sample_docs() -> dict[str, list[str]]:
    from knowlm_ray.corpus.filters import filter_reason, load_blocklist
    from knowlm_ray.config import CorpusConfig, load_config
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = load_config(CorpusConfig, REPO / "jobs" / "configs" / "tiny_corpus.yaml", ["tokenizer=x"])
    cfg = cfg.model_copy(update={"inputs": [s.model_copy(update={"path": str(REPO / s.path)}) for s in cfg.inputs]})
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    from knowlm_ray.corpus.dedup import local_near_dups

    rows = []
    for e in list_input_files(cfg.inputs):
        src = cfg.inputs[e["input"]]
        rows += [r for r in read_file_rows(e, src)
                 if r["status"] == "ok" and not filter_reason(r["text"], cfg.filters, r["lang"], terms)]
    near = local_near_dups(rows, cfg.dedup)  # the sample's own near duplicates stay out of the pools
    out: dict[str, list[str]] = {"baike": [], "wiki": [], "books": [], "code": []}
    seen = set()
    for r in rows:
        if r["doc_id"] not in near and r["text"] not in seen:
            seen.add(r["text"])
            out[r["source"]].append(r["text"])
    return out


def _junk(rng: random.Random, lang: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice("★☆#@%$&*^~◆■※|+=<>") for _ in range(rng.randint(40, 120)))
    if kind == 1:
        return " ".join(f"{rng.randint(130, 189)}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
                        for _ in range(rng.randint(8, 20)))
    if kind == 2:
        line = "点击这里免费领取优惠券，限时抢购！" if lang == "zh" else "Click here to win a free gift card now!"
        return "\n".join([line] * rng.randint(8, 25))
    return rng.choice(["无标题", "TBD", "待补充", "Stub."])


def _mutate(text: str, lang: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    if lang == "zh":
        return "".join(rng.choice(vocab) if "\u4e00" <= c <= "\u9fff" and rng.random() < rate else c for c in text)
    return " ".join(rng.choice(vocab) if rng.random() < rate else w for w in text.split(" "))


def _near_copy(text: str, lang: str, target: float, rng: random.Random, vocab: list[str]) -> str:
    """A copy with random word (en) or character (zh) replacements, as many as bring the 5-gram
    Jaccard with the original to about ``target`` (each edit changes up to 5 shingles)."""
    units = list(text) if lang == "zh" else text.split(" ")
    edits = max(1, round(len(units) * (1 - target) / (5 * (1 + target))))
    for i in rng.sample(range(len(units)), min(edits, len(units))):
        if lang != "zh" or "\u4e00" <= units[i] <= "\u9fff":
            units[i] = rng.choice(vocab)
    return "".join(units) if lang == "zh" else " ".join(units)


def generate(out: Path, mb: float, seed: int) -> dict:
    """Write the synthetic corpus under ``out``; returns the planted truth."""
    from knowlm_ray.corpus.split import split_sentences

    rng = random.Random(seed)
    docs = _sample_docs()
    pools = {"zh": [s for d in docs["baike"] for s in split_sentences(d.split("\n", 1)[-1], "zh") if len(s) > 8],
             "en": [s.strip() + " " for d in docs["wiki"] + docs["books"]
                    for s in split_sentences(d, "en") if len(s) > 30]}
    vocab = {"zh": sorted({c for s in pools["zh"] for c in s if "\u4e00" <= c <= "\u9fff"}),
             "en": sorted({w for s in pools["en"] for w in re.findall(r"[A-Za-z]{3,}", s)})}
    files = {"baike": (out / "zh.jsonl", "zh", 0.55), "wiki": (out / "en.jsonl", "en", 0.3),
             "books": (out / "books.txt", "en", 0.15)}
    truth = {"exact": {}, "near": {}, "near_text": {}, "junk": [], "malformed": [], "docs": 0, "bytes": 0}
    budget = mb * 1e6
    written = {k: [] for k in files}
    lines = {k: [] for k in files}
    size = 0
    while size < budget:
        source = rng.choices(list(files), weights=[f[2] for f in files.values()])[0]
        path, lang, _ = files[source]
        n = len(lines[source]) + 1
        doc_id = f"{source}/{path.name}:{n:09d}"
        title = f"T{n}"
        roll = rng.random()
        if roll < 0.005 and source != "books":  # jsonl only: a text line is never malformed
            line = '{"title": "broken", "content": "no closing quote}'
            truth["malformed"].append(doc_id)
            lines[source].append(line)
            size += len(line.encode())
            continue
        if roll < 0.025:
            text = _junk(rng, lang)
            truth["junk"].append(doc_id)
        elif roll < 0.065 and written[source]:
            src_id, title, src_text = rng.choice(written[source])
            text = src_text.replace(" ", "  ", 1) if lang == "en" else src_text + " "  # same after NFKC + spaces
            truth["exact"][doc_id] = src_id
        elif roll < 0.105 and written[source]:
            src_id, title, src_text = rng.choice(written[source])
            text = _near_copy(src_text, lang, rng.uniform(0.85, 0.97), rng, vocab[lang])
            truth["near"][doc_id] = src_id
            truth["near_text"][doc_id] = (src_text, text, lang)
        else:
            k = rng.randint(6, 14) if lang == "zh" else rng.randint(5, 12)
            text = _mutate("".join(rng.sample(pools[lang], k)), lang,
                           0.10 if lang == "zh" else 0.15, rng, vocab[lang])
            written[source].append((doc_id, title, text))
        if source == "books":
            line = text.replace("\n", " ")
        else:
            key = "content" if lang == "zh" else "text"
            line = json.dumps({"title": title, key: text}, ensure_ascii=False)
        lines[source].append(line)
        size += len(line.encode())
    truth["ids"] = []
    for source, (path, _, _) in files.items():
        path.write_text("\n".join(lines[source]) + "\n", encoding="utf-8")
        truth["docs"] += len(lines[source])
        truth["ids"] += [f"{source}/{path.name}:{i:09d}" for i in range(1, len(lines[source]) + 1)]
    code = out / "code"
    v0: list[str] = []
    for i in range(max(1, int(mb))):  # copies of the hand-written sample files, functions renamed
        for j, original in enumerate(docs["code"]):
            text = original
            for name in sorted(set(re.findall(r"\bdef (\w+)", text))):
                text = re.sub(rf"\b{name}\b", f"{name}_{i}_{rng.randint(0, 999)}", text)
            (code / f"v{i}").mkdir(parents=True, exist_ok=True)
            (code / f"v{i}" / f"m{j}.py").write_text(text + "\n", encoding="utf-8")
            truth["docs"] += 1
            truth["ids"].append(f"code/v{i}/m{j}.py")
            if i:  # a renamed copy of v0's file: planted near duplicate (if similar enough)
                truth["near"][f"code/v{i}/m{j}.py"] = f"code/v0/m{j}.py"
                truth["near_text"][f"code/v{i}/m{j}.py"] = (v0[j], text, "code")
            else:
                v0.append(text)
    truth["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    from knowlm_ray.corpus.dedup import jaccard, shingles

    truth["near_jaccard"] = {d: jaccard(shingles(a, lang), shingles(b, lang))
                             for d, (a, b, lang) in truth.pop("near_text").items()}
    return truth


def corpus_config(root: Path, tokenizer: str, out_dir: Path, threshold: float):
    from knowlm_ray.config import CorpusConfig, load_config

    cfg = load_config(CorpusConfig, REPO / "jobs" / "configs" / "tiny_corpus.yaml",
                      [f"tokenizer={tokenizer}", f"out_dir={out_dir}", f"dedup.threshold={threshold}",
                       "rows_per_shard=5000"])
    paths = {"baike": root / "zh.jsonl", "wiki": root / "en.jsonl", "books": root / "books.txt", "code": root / "code"}
    return cfg.model_copy(update={"inputs": [s.model_copy(update={"path": str(paths[s.source])}) for s in cfg.inputs]})


# --------------------------------------------------------------------------- pipeline (subprocess)
def _pipeline_child(args) -> None:
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    from knowlm_ray.corpus.pipeline import run
    from knowlm_ray.runtime import init_ray

    ray = init_ray(num_cpus=args.child_cpus, object_store_mb=1024)
    cfg = corpus_config(Path(args.child_root), args.tokenizer, Path(args.child_out), args.threshold)
    t0 = time.perf_counter()
    manifest = run(cfg)
    wall = time.perf_counter() - t0
    from knowlm_ray.corpus.shards import read_shards

    kept = sorted(set(read_shards(Path(args.child_out))["doc_id"].to_pylist()))
    dropped = [json.loads(line) for f in sorted((Path(args.child_out) / "dropped").glob("*.jsonl"))
               for line in f.read_text(encoding="utf-8").splitlines()]
    near = sorted(d["doc_id"] for d in dropped if d["status"] == "near_dup")
    print("RESULT " + json.dumps({"wall_s": wall, "stages": manifest["stages"], "filters": manifest["filters"],
                                  "near_dedup": manifest["near_dedup"], "kept_ids": kept, "near_ids": near}))
    ray.shutdown()


def run_pipeline(root: Path, tokenizer: str, cpus: int, threshold: float, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child-cpus", str(cpus), "--child-root", str(root),
           "--child-out", str(work / f"out{cpus}"), "--tokenizer", tokenizer, "--threshold", str(threshold)]
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
    t0 = time.perf_counter()
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    tok = load_tokenizer(tokenizer)
    stages = dict.fromkeys(("read", "malformed", "filtered", "exact_dups", "near_dups", "documents", "samples",
                            "tokens"), 0)
    docs, seen = [], set()
    rows = sorted((r for e in list_input_files(cfg.inputs) for r in read_file_rows(e, cfg.inputs[e["input"]])),
                  key=lambda r: r["doc_id"])
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
    return {"wall_s": time.perf_counter() - t0, "stages": stages}


# --------------------------------------------------------------------------- MinHash vs naive
def near_benchmark(root: Path, subset: int, threshold: float, seed: int) -> dict:
    import pyarrow as pa

    from knowlm_ray.config import DedupConfig
    from knowlm_ray.corpus.dedup import (BAND_SCHEMA, band_rows, bucket_edges, connected_components, lsh_params,
                                         shingles)
    from knowlm_ray.corpus.filters import dedup_key, filter_reason, load_blocklist
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = corpus_config(root, "x", root / "unused", threshold)
    terms, _ = load_blocklist(cfg.filters.blocklist.files)
    docs, seen = [], set()
    for e in list_input_files(cfg.inputs):
        src = cfg.inputs[e["input"]]
        if src.source == "code":
            continue
        for r in read_file_rows(e, src):
            if r["status"] != "ok" or filter_reason(r["text"], cfg.filters, r["lang"], terms):
                continue
            k = dedup_key(r["text"])
            if k not in seen:
                seen.add(k)
                docs.append(r)
    docs = sorted(docs, key=lambda r: r["doc_id"])[:subset]
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
    table = pa.table(band_rows(docs, dcfg, seed, bands, rows), schema=BAND_SCHEMA)
    edges_t = bucket_edges(table, threshold, dcfg.max_bucket_compare)
    found = {(a, b) for a, b in zip(edges_t["a"].to_pylist(), edges_t["b"].to_pylist()) if a is not None}
    minhash_s = time.perf_counter() - t0
    comparisons = edges_t["candidates"][-1].as_py()

    tp = len(found & truth)
    true_dups = set(connected_components(sorted(truth)))
    got_dups = set(connected_components(sorted(found)))
    return {"docs": len(docs), "pairs": len(docs) * (len(docs) - 1) // 2, "true_pairs": len(truth),
            "found_pairs": len(found), "pair_precision": tp / len(found) if found else 1.0,
            "pair_recall": tp / len(truth) if truth else 1.0,
            "doc_precision": len(got_dups & true_dups) / len(got_dups) if got_dups else 1.0,
            "doc_recall": len(got_dups & true_dups) / len(true_dups) if true_dups else 1.0,
            "naive_s": naive_s, "minhash_s": minhash_s, "bands": bands, "rows": rows,
            "bucket_pairs": comparisons}


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


# --------------------------------------------------------------------------- main
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
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default="1,2")
    ap.add_argument("--subset", type=int, default=1500)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--repeat", type=int, default=2, help="runs per CPU count, interleaved; the best is reported")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "corpus.md"))
    ap.add_argument("--child-cpus", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-root", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_cpus:
        _pipeline_child(args)
        return

    work = Path(tempfile.mkdtemp(prefix="corpus_bench_"))
    root = work / "corpus"
    root.mkdir()
    t0 = time.perf_counter()
    truth = generate(root, args.mb, args.seed)
    gen_s = time.perf_counter() - t0
    tokenizer = args.tokenizer or _tokenizer(work)
    print(f"synthetic corpus: {truth['docs']} documents, {truth['bytes'] / 1e6:.1f} MB in {gen_s:.1f}s "
          f"({len(truth['exact'])} exact dups, {len(truth['near'])} near dups, {len(truth['junk'])} junk, "
          f"{len(truth['malformed'])} malformed planted) -> {root}", flush=True)

    cores_before = effective_cores()
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
    cores_after = effective_cores()
    print(f"plain Python, 1 process: {local['wall_s']:.1f}s {local['stages']}", flush=True)
    near = near_benchmark(root, args.subset, args.threshold, args.seed)
    print(f"near dedup on {near['docs']} docs: naive {near['naive_s']:.1f}s, MinHash {near['minhash_s']:.2f}s", flush=True)

    first = next(iter(runs.values()))
    kept = set(first["kept_ids"])
    # a planted near copy that its random edits left unchanged is an exact duplicate: not counted here
    planted_near = {d for d, j in truth["near_jaccard"].items() if j < 1.0}
    marked = set(first["near_ids"])
    caught = len(planted_near & marked)
    detectable = {d for d in planted_near if truth["near_jaccard"][d] >= args.threshold}
    caught_detectable = len(detectable & marked)
    planted_exact_caught = len([d for d in truth["exact"] if d not in kept])
    # false positives: removed documents that were planted as neither duplicates, junk nor malformed
    planted_gone = set(truth["near"]) | set(truth["exact"]) | set(truth["junk"]) | set(truth["malformed"])
    wrongly_removed = sorted(set(truth["ids"]) - kept - planted_gone)
    st = first["stages"]
    lines = [
        "# Corpus pipeline benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/corpus_pipeline.py --mb {args.mb:g} --seed {args.seed} "
        f"--cpus {args.cpus} --repeat {args.repeat} --subset {args.subset} --threshold {args.threshold}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or platform.platform()}), "
        f"load average at the end {os.getloadavg()[0]:.1f}; effective cores for two CPU-bound processes "
        f"{cores_before:.2f} before and {cores_after:.2f} after the pipeline runs (2.00 on an idle 2-core box; "
        f"other jobs share this one, so no 2-CPU speed-up above that is possible). "
        f"Ray Data, wall time of `pipeline.run` in a fresh Ray per CPU count (Ray start excluded).",
        "",
        f"Synthetic corpus (seed {args.seed}): {truth['docs']} documents, {truth['bytes'] / 1e6:.2f} MB; planted "
        f"{len(truth['exact'])} exact and {len(truth['near'])} near duplicates, {len(truth['junk'])} junk, "
        f"{len(truth['malformed'])} malformed lines.",
        "",
        "## Pipeline throughput (read, convert, filter, exact + MinHash dedup, split, tokenise, shard)",
        "",
        "| run | wall s (best; all runs) | documents/s | tokens/s | MB/s | vs 1 CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = None
    for cpus, r in runs.items():
        s = r["stages"]
        base = base or r["wall_s"]
        lines.append(f"| Ray Data, {cpus} CPU{'s' if cpus > 1 else ''} | {r['wall_s']:.1f} "
                     f"({', '.join(f'{w:.1f}' for w in walls[cpus])}) | {s['read'] / r['wall_s']:.0f} | "
                     f"{s['tokens'] / r['wall_s']:.0f} | {truth['bytes'] / 1e6 / r['wall_s']:.2f} | "
                     f"{base / r['wall_s']:.2f}x |")
    s = local["stages"]
    lines.append(f"| plain Python loop, 1 process, no Ray | {local['wall_s']:.1f} | {s['read'] / local['wall_s']:.0f} | "
                 f"{s['tokens'] / local['wall_s']:.0f} | {truth['bytes'] / 1e6 / local['wall_s']:.2f} | "
                 f"{base / local['wall_s']:.2f}x |")
    same = len({json.dumps(r["stages"], sort_keys=True) for r in [*runs.values(), local]}) == 1
    lines += [
        "",
        f"Stage counts ({'identical for every CPU count and the plain loop' if same else 'DIFFER between runs'}): "
        f"read {st['read']}, malformed {st['malformed']}, filtered {st['filtered']} "
        f"({', '.join(f'{k} {v}' for k, v in first['filters'].items() if v)}), exact dups {st['exact_dups']}, "
        f"near dups {st['near_dups']}, documents {st['documents']}, samples {st['samples']}, tokens {st['tokens']}. "
        f"Planted exact duplicates removed: {planted_exact_caught}/{len(truth['exact'])}; planted near "
        f"duplicates removed: {caught}/{len(planted_near)} (recall {caught / max(1, len(planted_near)):.3f}; "
        f"{caught_detectable}/{len(detectable)} of those whose shingle Jaccard with their source is >= "
        f"{args.threshold}: recall {caught_detectable / max(1, len(detectable)):.3f}); near dedup "
        f"{first['near_dedup']['bands']} bands x {first['near_dedup']['rows']} rows, "
        f"{first['near_dedup']['edges']} verified edges, {st['near_dups']} near duplicates marked "
        f"(precision vs planted {caught / max(1, len(marked)):.3f}). Clean documents removed by any stage: "
        f"{len(wrongly_removed)}{' (' + ', '.join(wrongly_removed[:5]) + ')' if wrongly_removed else ''}.",
        "",
        f"## Near dedup: MinHash LSH vs naive all-pairs exact Jaccard ({near['docs']} documents, threshold {args.threshold})",
        "",
        "| method | pairs compared | time s | near-dup pairs | pair precision | pair recall | doc precision | doc recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| naive all pairs (exact Jaccard of shingle sets) | {near['pairs']} | {near['naive_s']:.2f} | "
        f"{near['true_pairs']} | 1 | 1 | 1 | 1 |",
        f"| MinHash LSH ({near['bands']}x{near['rows']}, 128 perm, verified) | {near['bucket_pairs']} (bucket collisions) | "
        f"{near['minhash_s']:.2f} | {near['found_pairs']} | {near['pair_precision']:.3f} | {near['pair_recall']:.3f} | "
        f"{near['doc_precision']:.3f} | {near['doc_recall']:.3f} |",
        "",
        f"MinHash is {near['naive_s'] / max(near['minhash_s'], 1e-9):.1f}x faster here; naive grows with n^2 "
        f"({near['pairs']} pairs for {near['docs']} documents), MinHash with n. Doc-level: the non-representative "
        "members of the connected components of each method's pairs.",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
