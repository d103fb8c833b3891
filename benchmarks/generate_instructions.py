"""Instruction generation: what bounded concurrency buys against a slow endpoint, and what the
ROUGE-L novelty check costs against rouge_score, side by side in one run.

    .venv/bin/python benchmarks/generate_instructions.py [--latency-ms 200] [--tasks 64] [--pool 2000]

1. Throughput: ``knowlm_ray.curate.generate.run`` (backtranslation, the full job path: ledger,
   retries, manifest) against a local OpenAI-style server that answers every request after
   ``--latency-ms`` (a stand-in for a model's time per request; the server itself does no work),
   at concurrency 1, 4 and 16: tasks/s and the ratio to concurrency 1.
2. ROUGE-L: the best score of each of 200 new instructions against a pool of ``--pool`` English
   instructions, by ``knowlm_ray.curate.generate_rouge.RougePool`` and by ``rouge_score``'s
   RougeScorer (what Self-Instruct calls; ``pip install rouge-score==0.1.2`` to compare), checked
   equal to 1e-12; candidates/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from knowlm_ray.config import GenerateConfig
from knowlm_ray.curate.generate import run
from knowlm_ray.curate.generate_rouge import RougePool

WORDS = (
    "write explain list describe compare summarize translate suggest the a of in for about three five "
    "river bridge city poem story tea sky ocean history reasons steps ideas names short long simple "
    "student teacher recipe bread mountain glacier volcano market budget chess rules child friend"
).split()


def serve(latency_s: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _json(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._json({"data": [{"id": "bench"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency_s)
            self._json({"id": "r", "choices": [{"message": {"content": "INSTRUCTION: Why?"}, "finish_reason": "stop"}]})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def throughput(latency_ms: float, tasks: int) -> list[dict]:
    srv, url = serve(latency_ms / 1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(tasks)))
        for conc in (1, 4, 16):
            cfg = GenerateConfig(
                generator="backtranslation",
                inputs=[str(docs)],
                out_dir=f"{tmp}/out{conc}",
                base_url=url,
                model="bench",
                num_tasks=0,
                concurrency=conc,
            )
            t0 = time.perf_counter()
            m = run(cfg)
            dt = time.perf_counter() - t0
            assert m["instructions"]["kept"] == tasks, m
            rows.append({"concurrency": conc, "seconds": dt, "tasks_per_s": tasks / dt})
    srv.shutdown()
    base = rows[0]["tasks_per_s"]
    for r in rows:
        r["ratio"] = r["tasks_per_s"] / base
    return rows


def rouge(pool_size: int, n: int = 200) -> dict:
    rng = random.Random(0)

    def inst() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))

    pool = [inst() for _ in range(pool_size)]
    cands = [inst() for _ in range(n)]
    t0 = time.perf_counter()
    p = RougePool(pool, 0.7)
    ours = [p.best(c)[0] for c in cands]
    t_ours = time.perf_counter() - t0
    out = {"pool": pool_size, "candidates": n, "ours_per_s": n / t_ours}
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return out
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    t0 = time.perf_counter()
    ref = [max(scorer.score(x, c)["rougeL"].fmeasure for x in pool) for c in cands]
    t_ref = time.perf_counter() - t0
    assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-12
    out.update(rouge_score_per_s=n / t_ref, ratio=t_ref / t_ours)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    runs = [throughput(a.latency_ms, a.tasks) for _ in range(a.repeats)]
    print(f"## throughput: {a.tasks} backtranslation tasks, endpoint latency {a.latency_ms:.0f} ms, {a.repeats} runs")
    print("| concurrency | tasks/s (median) | x concurrency 1 |\n|---:|---:|---:|")
    for i, conc in enumerate((1, 4, 16)):
        tps = statistics.median(r[i]["tasks_per_s"] for r in runs)
        ratio = statistics.median(r[i]["ratio"] for r in runs)
        print(f"| {conc} | {tps:.2f} | {ratio:.2f} |")
    r = rouge(a.pool)
    print(f"\n## ROUGE-L: best of {r['candidates']} new instructions against a pool of {r['pool']}")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
