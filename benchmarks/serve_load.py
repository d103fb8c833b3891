"""Load benchmark for the Serve app's ``POST /generate``: throughput and latency percentiles under
N concurrent clients, ``@serve.batch`` dynamic batching vs ``max_batch_size=1`` (Serve with
batching off), plus the naive baseline KnowLM's scripts are — one request at a time through
``transformers.generate`` in-process. Same model, same prompts, same run.

    .venv/bin/python benchmarks/serve_load.py                       # tiny model, built on the fly
    .venv/bin/python benchmarks/serve_load.py --model artifacts/demo/merged --clients 1 4 16 \\
        --requests 64 --max-tokens 32 --out benchmarks/results/serve.md

Every request is greedy with the same ``max_tokens`` (the tiny random model rarely emits EOS, so
each generates the full budget). Both Serve apps are deployed side by side (``/batched``,
``/unbatched``: one replica each) and measured alternately at every concurrency level,
``--repeats`` times, so a busy machine's swings hit both alike; the table gives the median
throughput over the repeats and latency percentiles over all their requests. Throughput =
requests / wall time of a level; tokens/s counts generated tokens. The markdown table (and the
command) is appended to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(n: int) -> list[dict]:
    topics = ["知识图谱", "浙江大学", "信息抽取", "the river Thames", "Marie Curie", "大语言模型", "杭州西湖",
              "relation extraction"]
    return [{"instruction": f"请介绍一下{topics[i % len(topics)]}。（第{i}题）", "input": "" if i % 2 else
             f"背景 {i}: 这是一段用于测试的上下文。"} for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(q * (len(values) - 1)))))
    return values[k]


def run_level(url: str, bodies: list[dict], clients: int, max_tokens: int) -> dict:
    """One concurrency level: ``clients`` threads share ``bodies``; latencies kept for pooling."""
    import requests

    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    errors = [0]
    it = iter(bodies)

    def worker():
        session = requests.Session()
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                return
            t0 = time.perf_counter()
            r = session.post(f"{url}/generate", json={**body, "parameters": {"max_tokens": max_tokens}},
                             timeout=300)
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code == 200:
                    latencies.append(dt)
                    tokens[0] += r.json()["num_output_tokens_cf"]
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "wall_s": wall,
            "rps": len(latencies) / wall, "tok_s": tokens[0] / wall, "latencies": latencies,
            "p50_ms": 1000 * _pct(latencies, 0.5), "p95_ms": 1000 * _pct(latencies, 0.95)}


def combine(runs: list[dict]) -> dict:
    """Median throughput over repeats; latency percentiles over every request of every repeat."""
    import statistics

    lat = [x for r in runs for x in r["latencies"]]
    return {"clients": runs[0]["clients"], "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs), "rps": statistics.median(r["rps"] for r in runs),
            "tok_s": statistics.median(r["tok_s"] for r in runs), "p50_ms": 1000 * _pct(lat, 0.5),
            "p95_ms": 1000 * _pct(lat, 0.95), "runs": [round(r["rps"], 1) for r in runs]}


def naive_baseline(model_dir: str, bodies: list[dict], max_tokens: int) -> dict:
    """KnowLM's way: one request at a time through transformers.generate (in-process, no HTTP)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.instruct.alpaca import build_prompt

    torch.set_num_threads(1)  # what a Serve replica gets (OMP_NUM_THREADS=1 for 0.5 CPU)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        enc = tok(build_prompt(body["instruction"], body["input"]), return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.unk_token_id, eos_token_id=tok.eos_token_id)
        tokens += out.shape[1] - enc["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"clients": 1, "requests": len(bodies), "errors": 0, "wall_s": wall, "rps": len(bodies) / wall,
            "tok_s": tokens / wall, "p50_ms": 1000 * _pct(latencies, 0.5), "p95_ms": 1000 * _pct(latencies, 0.95)}


def build_model(tmp: Path) -> str:
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
    # the test suite's tiny model (vocab 3000, hidden 64, 2 layers)
    return str(build_tiny(tmp / "tiny", corpus, TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF model dir (default: build the test suite's tiny model)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8, help="max_batch_size of the batched app")
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements per level")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/serve.md"))
    args = ap.parse_args(argv)

    from knowlm_ray.runtime import init_ray, set_default_env

    set_default_env()
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    model = args.model or build_model(tmp)
    bodies = _prompts(args.requests)
    init_ray()
    from ray import serve

    from knowlm_ray.serve.app import build_app
    from knowlm_ray.serve.launch import wait_ready

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    setups = {"batched": (f"Serve, @serve.batch max_batch_size={args.batch_size}", args.batch_size),
              "unbatched": ("Serve, max_batch_size=1 (no batching)", 1)}
    t0 = time.perf_counter()
    for name, (_, batch) in setups.items():
        serve.run(build_app({"model": model, "num_replicas": 1, "max_batch_size": batch, "batch_wait_timeout_s": 0.01,
                             "max_ongoing_requests": 64, "max_waiting_requests": 64}),
                  name=name, route_prefix=f"/{name}", blocking=False)
    for name in setups:
        wait_ready(f"http://127.0.0.1:{port}/{name}")
        run_level(f"http://127.0.0.1:{port}/{name}", bodies[:4], 2, args.max_tokens)  # warm-up
    print(f"both apps ready in {time.perf_counter() - t0:.1f}s", flush=True)

    load0 = os.getloadavg()
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for c in args.clients:
        runs: dict[str, list[dict]] = {name: [] for name in setups}
        for _ in range(args.repeats):
            for name in setups:
                runs[name].append(run_level(f"http://127.0.0.1:{port}/{name}", bodies, c, args.max_tokens))
        for name in setups:
            res = combine(runs[name])
            results[name].append(res)
            print(f"  {name:>9} {c:>3} clients: {res['rps']:.1f} req/s {res['runs']}, {res['tok_s']:.0f} tok/s, "
                  f"p50 {res['p50_ms']:.0f} ms, p95 {res['p95_ms']:.0f} ms, errors {res['errors']}", flush=True)
    load1 = os.getloadavg()
    serve.shutdown()
    naive = naive_baseline(model, bodies, args.max_tokens)
    print(f"naive: {naive['rps']:.1f} req/s, p50 {naive['p50_ms']:.0f} ms", flush=True)
    rows: list[tuple[str, dict]] = [(setups[name][0], r) for name in setups for r in results[name]]
    rows.append(("naive: transformers.generate, one at a time, in-process", naive))

    import ray

    ray.shutdown()
    exe = Path(sys.executable)
    py = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else "python"
    cmd = f"{py} benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    best = {r["clients"]: r["rps"] for r in results["batched"]}
    flat = {r["clients"]: r["rps"] for r in results["unbatched"]}
    lines = [
        f"\n## serve_load — {time.strftime('%Y-%m-%d %H:%M')}\n",
        f"`{cmd.strip()}`\n",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU; 1-min load "
        f"average {load0[0]:.1f} before and {load1[0]:.1f} after the Serve runs (other work shared the "
        f"machine). Model: {Path(model).name} "
        f"({'the test suite tiny LLaMA' if not args.model else model}); {args.requests} requests per level, "
        f"greedy, max_tokens {args.max_tokens}; one replica per app (0.5 CPU, 1 torch thread), both apps "
        f"measured alternately, {args.repeats} repeats (req/s = median, per-repeat values in brackets); "
        "client threads on the same machine.\n",
        "| setup | clients | req/s | tokens/s | p50 ms | p95 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        runs = f" {r['runs']}" if "runs" in r else ""
        lines.append(f"| {label} | {r['clients']} | {r['rps']:.1f}{runs} | {r['tok_s']:.0f} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['errors']} |")
    speed = ", ".join(f"{c} clients {best[c] / flat[c]:.1f}x" for c in sorted(best) if c in flat)
    lines.append(f"\nBatching vs max_batch_size=1, throughput: {speed}; batched at {max(best)} clients vs the "
                 f"naive baseline: {best[max(best)] / naive['rps']:.1f}x.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("# Serving benchmarks\n\nResults of `benchmarks/serve_*.py` (run from the repository "
                       "root), newest last.\n", encoding="utf-8")
    with out.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
