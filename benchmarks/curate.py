"""Instruction curation: the selector chain's documents/s, and ROUGE-L dedup by LSH vs all pairs.

    .venv/bin/python benchmarks/curate.py [--docs 20000] [--pairs-docs 50000] [--threshold 0.7]
        [--out benchmarks/results/curate.md]

Part 1, throughput (same synthetic records, same chain, one run of this script): exact_dedup,
rouge_dedup, length, cirs, mtld, pii (mask), language over ``--docs`` alpaca records (English and
Chinese, ~15 % near-duplicate variants, some code answers, some e-mail / phone numbers):

* ``plain loop``: one process, no Ray: the pipeline's own cores (``parse_range``,
  ``apply_row_wise``, the exact keys, the LSH candidates, ROUGE-L, the marks) in a loop.
* ``ray N``: ``knowlm_ray.curate.pipeline.run`` on ``ray.init(num_cpus=N)`` (a fresh Ray in a
  child process per N), wall time of the whole job including writing the outputs; a small warm-up
  job runs first so the timed run does not pay Ray Data's first start.

The kept files of every mode are compared (they must be byte-identical).

Part 2, ROUGE-L near-duplicates on ``--pairs-docs`` instructions (Zipf-distributed words, so
unrelated instructions share common words; 20 % near-duplicate variants made by 1-3 word edits,
some of variants). EasyInstruct's RougeSelector computes ROUGE-L for every pair: n (n - 1) / 2.
The ground truth is every pair above the threshold, found exactly: ROUGE-L F1 = 2 LCS / (|a| +
|b|) <= 2 overlap / (|a| + |b|) with overlap the multiset intersection, which a sparse matrix
product gives for all pairs at once (token t's k-th occurrence is one column); only the pairs that
bound lets through get a real ROUGE-L (the bound is never below the score, so nothing is missed).
The LSH path is the job's: MinHash of token sets, band buckets, ROUGE-L on candidate pairs only.
Reported: the pairs above the threshold, the LSH's recall of them, ROUGE computations of each
(all pairs: n (n - 1) / 2; LSH: its candidate pairs) and their ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHAIN = [
    {"name": "exact_dedup"},
    {"name": "rouge_dedup", "threshold": 0.7, "fields": ["instruction", "input"]},
    {"name": "length", "field": "output", "min_chars": 5},
    {"name": "cirs", "field": "output", "min": 4},
    {"name": "mtld", "field": "output", "min": 5, "max": 1e9},
    {"name": "pii", "action": "mask"},
    # last: the synthetic words are no language py3langid knows, so most English-script rows stop here
    {"name": "language", "langs": ["zh", "en"]},
]
ZH = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞"


def _pseudo_words(n: int, rng: random.Random) -> list[str]:
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(1, 4))))
    return sorted(out)


class Texts:
    """Zipf-distributed words (a shared 'function word' head, a long tail)."""

    def __init__(self, seed: int, vocab: int = 8000):
        self.rng = random.Random(seed)
        self.words = _pseudo_words(vocab, self.rng)
        self.cum = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(vocab)))

    def sentence(self, lo: int, hi: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=self.rng.randint(lo, hi))

    def edit(self, ws: list[str]) -> list[str]:
        ws = list(ws)
        for _ in range(self.rng.randint(1, 3)):
            op, i = self.rng.random(), self.rng.randrange(len(ws))
            if op < 0.4:
                ws[i] = self.rng.choices(self.words, cum_weights=self.cum)[0]
            elif op < 0.7 and len(ws) > 3:
                del ws[i]
            else:
                ws.insert(i, self.rng.choices(self.words, cum_weights=self.cum)[0])
        return ws


def instructions(n: int, seed: int) -> list[str]:
    """``n`` instructions, 20 % of them 1-3 word edits of an earlier one (some of a variant)."""
    t = Texts(seed)
    out: list[list[str]] = []
    for _ in range(n):
        if out and t.rng.random() < 0.2:
            out.append(t.edit(t.rng.choice(out[-2000:])))
        else:
            out.append(t.sentence(6, 20))
    return [" ".join(ws) for ws in out]


def records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed + 1)
    t = Texts(seed + 2)
    ins = instructions(n, seed)
    out = []
    for i, inst in enumerate(ins):
        kind = rng.random()
        if kind < 0.15:  # Chinese
            inst = "".join(rng.choices(ZH, k=rng.randint(8, 20)))
            ans = "".join(rng.choices(ZH, k=rng.randint(15, 60))) + "。"
        elif kind < 0.25:  # code
            ans = f"```python\ndef f{i}(xs):\n    total = 0\n    for x in xs:\n        if x % {rng.randint(2, 9)}:\n            total += x\n    return total\n```"
        elif kind < 0.30:  # personal data
            ans = " ".join(t.sentence(5, 15)) + f" mail u{i}@example.com or call 138{rng.randint(10**7, 10**8 - 1)}"
        elif kind < 0.33:
            ans = "ok"  # too short
        else:
            ans = " ".join(t.sentence(10, 60)) + "."
        out.append({"instruction": inst, "input": "", "output": ans})
    return out


# ------------------------------------------------------------------------------- part 1
def plain_loop(path: Path, out_path: Path) -> float:
    """The chain in one process through the pipeline's own cores; returns seconds."""
    import numpy as np

    from knowlm_ray.curate import pipeline as P
    from knowlm_ray.curate.config import CurateConfig
    from knowlm_ray.curate.dedup import candidate_pairs, dedup_params, greedy_drops, score_pairs

    t0 = time.perf_counter()
    cfg = CurateConfig(inputs=[str(path)], out_dir=str(out_path), selectors=CHAIN)
    files = [str(path)]
    table = P.parse_range(0, str(path), 0, path.stat().st_size, 1)
    for kind, group in P._stages(cfg):
        if kind == "row":
            table = P.apply_row_wise(table, [(label, s.model_dump()) for label, s in group])
            continue
        label, s = group[0]
        marks = {}
        if kind == "exact_dedup":
            keys = P.exact_keys(table, s.fields)
            first: dict = {}
            for uid, key in zip(keys["uid"].to_pylist(), keys["key"].to_pylist()):
                if key in first:
                    f, line = P.where(first[key], files)
                    marks[uid] = P.sel.dump({"of": f"{f}:{line}"})
                else:
                    first[key] = uid
        else:
            k = P.rouge_keys(table, s.model_dump(), cfg.seed)
            bands, _ = dedup_params(s)
            uids = k["uid"].to_numpy()
            mat = np.frombuffer(b"".join(k["keys"].to_pylist()), dtype=np.int64).reshape(len(uids), bands)
            pairs = sorted(candidate_pairs(uids, mat, s.max_bucket_compare))
            rows = {r["uid"]: P.sel.joined(r, s.fields) for r in table.to_pylist() if not r["status"]}
            for b, (a, r) in greedy_drops(score_pairs(pairs, rows, s.threshold)).items():
                f, line = P.where(a, files)
                marks[b] = P.sel.dump({"of": f"{f}:{line}", "rouge_l": round(r, 3)})
        table = P.mark_rows(table, label, marks)
    kept = [r["raw"] for r in table.to_pylist() if not r["status"]]
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "kept.jsonl").write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    return time.perf_counter() - t0


def _ray_child(path: str, out: str, cpus: int) -> None:
    import ray

    from knowlm_ray.curate.config import CurateConfig
    from knowlm_ray.curate.pipeline import run

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    warm = Path(out + ".warm")
    warm_in = Path(out + ".warm.jsonl")
    warm_in.write_text("".join(json.dumps(r) + "\n" for r in records(200, 99)), encoding="utf-8")
    run(CurateConfig(inputs=[str(warm_in)], out_dir=str(warm), selectors=CHAIN))
    t0 = time.perf_counter()
    m = run(CurateConfig(inputs=[path], out_dir=out, selectors=CHAIN))
    print(json.dumps({"seconds": time.perf_counter() - t0, "manifest": {k: m[k] for k in ("read", "kept", "dropped")}}))


# ------------------------------------------------------------------------------- part 2
def all_pairs_truth(texts: list[str], threshold: float) -> tuple[set, int]:
    """Every pair (i < j) with ROUGE-L F1 > threshold, exactly (see the module doc), and the
    number of exact ROUGE-L computations the bound left."""
    import numpy as np
    from scipy import sparse

    from knowlm_ray.curate.dedup import rouge_l_tokens, rouge_tokens

    toks = [rouge_tokens(t) for t in texts]
    col: dict = {}
    rows, cols = [], []
    for i, ws in enumerate(toks):
        seen: dict = {}
        for w in ws:
            k = seen[w] = seen.get(w, 0) + 1
            rows.append(i)
            cols.append(col.setdefault((w, k), len(col)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(toks), len(col)))
    xt = x.T.tocsc()
    lengths = np.array([len(ws) for ws in toks], dtype=np.float32)
    truth, verified = set(), 0
    step = 500
    for s in range(0, len(toks), step):
        overlap = (x[s : s + step] @ xt).tocoo()
        i, j = overlap.row + s, overlap.col
        ok = (j > i) & (2 * overlap.data / (lengths[i] + lengths[j]) > threshold)
        for a, b in zip(i[ok].tolist(), j[ok].tolist()):
            verified += 1
            if rouge_l_tokens(toks[a], toks[b]) > threshold:
                truth.add((a, b))
    return truth, verified


def lsh_pairs(texts: list[str], threshold: float) -> tuple[set, int, float]:
    import numpy as np

    from knowlm_ray.curate.config import RougeDedup
    from knowlm_ray.curate.dedup import bucket_keys, candidate_pairs, score_pairs

    t0 = time.perf_counter()
    cfg = RougeDedup(name="rouge_dedup", threshold=threshold)
    uids = np.arange(len(texts), dtype=np.int64)
    pairs = sorted(candidate_pairs(uids, bucket_keys(texts, cfg, seed=0), cfg.max_bucket_compare))
    found = {(a, b) for a, b, _ in score_pairs(pairs, dict(enumerate(texts)), threshold)}
    return found, len(pairs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--pairs-docs", type=int, default=50000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "curate.md"))
    ap.add_argument("--child", nargs=3, metavar=("PATH", "OUT", "CPUS"), help=argparse.SUPPRESS)
    ap.add_argument("--skip", choices=("throughput", "pairs"), help="leave one part out")
    a = ap.parse_args()
    if a.child:
        _ray_child(a.child[0], a.child[1], int(a.child[2]))
        return
    lines = [
        "# Instruction curation (benchmarks/curate.py)",
        "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/curate.py', *sys.argv[1:]])}` — {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}",
        "",
    ]
    if a.skip != "throughput":
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "in.jsonl")
            src.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records(a.docs, 0)), encoding="utf-8"
            )
            secs = {"plain loop": plain_loop(src, Path(tmp, "plain"))}
            kept = {"plain loop": Path(tmp, "plain", "kept.jsonl").read_bytes()}
            manifests = {}
            for cpus in (1, 2):
                out = Path(tmp, f"ray{cpus}")
                res = subprocess.run(
                    [sys.executable, __file__, "--child", str(src), str(out), str(cpus)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")},
                )
                if res.returncode:
                    sys.exit(f"ray {cpus} CPU run failed:\n{res.stderr[-3000:]}")
                got = json.loads(res.stdout.strip().splitlines()[-1])
                secs[f"ray {cpus} CPU"] = got["seconds"]
                manifests[cpus] = got["manifest"]
                kept[f"ray {cpus} CPU"] = (out / "kept.jsonl").read_bytes()
            same = len(set(kept.values())) == 1
            lines += [
                f"## Selector chain: {a.docs} records, {' -> '.join(s['name'] for s in CHAIN)}",
                "",
                "| mode | seconds | records/s | vs plain loop |",
                "|---|---:|---:|---:|",
            ]
            for mode, s in secs.items():
                lines.append(f"| {mode} | {s:.1f} | {a.docs / s:.0f} | {secs['plain loop'] / s:.2f}x |")
            lines += [
                "",
                f"kept.jsonl byte-identical across modes: {same}; manifest (ray 2 CPU): `{json.dumps(manifests[2])}`",
                "",
            ]
    if a.skip != "pairs":
        texts = instructions(a.pairs_docs, 1)
        n = len(texts)
        t0 = time.perf_counter()
        truth, verified = all_pairs_truth(texts, a.threshold)
        t_truth = time.perf_counter() - t0
        found, cand, t_lsh = lsh_pairs(texts, a.threshold)
        recall = len(found & truth) / len(truth) if truth else 1.0
        all_pairs = n * (n - 1) // 2
        from knowlm_ray.curate.dedup import rouge_l

        sample = random.Random(5).sample(range(n), 400)
        t0 = time.perf_counter()
        for i, j in zip(sample[::2], sample[1::2]):
            rouge_l(texts[i], texts[j])
        per = (time.perf_counter() - t0) / 200
        lines += [
            f"## ROUGE-L near-duplicates: {n} instructions, threshold {a.threshold}",
            "",
            "| | ROUGE-L computations | pairs above threshold found | recall | seconds |",
            "|---|---:|---:|---:|---:|",
            f"| all pairs (EasyInstruct's RougeSelector) | {all_pairs:,} | {len(truth):,} | 1.000 | "
            f"~{all_pairs * per:,.0f} (estimated: {per * 1e6:.0f} µs per ROUGE-L) |",
            f"| exact ground truth (lossless overlap bound, then ROUGE-L) | {verified:,} | {len(truth):,} | 1.000 | {t_truth:.1f} |",
            f"| MinHash LSH candidates (the job's rouge_dedup) | {cand:,} | {len(found & truth):,} | {recall:.4f} | {t_lsh:.1f} |",
            "",
            f"LSH: {all_pairs / max(cand, 1):,.0f}x fewer ROUGE-L computations than all pairs, recall {recall:.4f}.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
