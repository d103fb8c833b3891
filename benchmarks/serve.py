"""Serving benchmark for ``POST /generate``: requests/s and p50/p99 latency at 1, 4 and 16
concurrent clients, continuous batching vs ``@serve.batch`` dynamic batching vs the naive
baseline KnowLM's scripts are — one request at a time through ``transformers.generate``,
in-process, no HTTP. Same model, same prompts, same run; plus memory per replica, fp32 vs int8.

    .venv/bin/python benchmarks/serve.py                          # tiny + compute-bound model
    .venv/bin/python benchmarks/serve.py --models tiny --clients 16 --repeats 3
    .venv/bin/python benchmarks/serve.py --ingress haproxy         # Serve behind HAProxy
    .venv/bin/python benchmarks/serve.py --model artifacts/demo/merged --models given

Two models, built into a temp dir: ``tiny`` (the test suite's: hidden 64, 2 layers), whose forward
pass is so cheap that HTTP and Serve overhead bound a replica, and ``compute`` (hidden 512,
8 layers, ~30M parameters; ``--compute-hidden/--compute-layers``), where the forward pass
dominates as it does for a 13B model on a GPU — the representative case for batching.

Every request is greedy with the same ``max_tokens`` (random weights rarely emit EOS, so each
generates the full budget). Both Serve apps (``/continuous``, ``/dynamic``; ``--replicas`` each
(default 1), 0.5 CPU = 1 torch thread, ``max_batch_size`` rows) are deployed side by side and measured
alternately at every level, ``--repeats`` times, so a busy machine's swings hit both alike: the
table gives the median throughput over the repeats (per-repeat values in brackets) and latency
percentiles over all their requests. The naive baseline runs in the benchmark process with 1 torch
thread, like a replica, once per repeat between the 16-client Serve runs (the Serve replicas idle
meanwhile), so all three see the same machine. Around the top level's Serve runs the CPU time of
the client threads, Serve's proxy and the app's replicas (and of the continuous replica's decoding
thread) is read per process: CPU per request, by where it is spent; a third app, ``/floor``, answers
at once with no model, for what Serve itself costs. The goal the issue sets (issue 7): at 16 clients,
>= 5x the baseline's requests/s with p99 latency no worse than 16 sequential requests (16 x its mean).

Memory per replica: a fresh process loads the engine (fp32, then torch dynamic int8) and runs
one batch; the table gives its resident memory after loading minus after the imports, and its
peak. The markdown (with the command) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETUPS = {"continuous": "Serve, continuous batching", "dynamic": "Serve, @serve.batch dynamic batching"}
GOAL_X = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(n: int) -> list[dict]:
    topics = [
        "知识图谱",
        "浙江大学",
        "信息抽取",
        "the river Thames",
        "Marie Curie",
        "大语言模型",
        "杭州西湖",
        "relation extraction",
    ]
    return [
        {
            "instruction": f"请介绍一下{topics[i % len(topics)]}。（第{i}题）",
            "input": "" if i % 2 else f"背景 {i}: 这是一段用于测试的上下文。",
        }
        for i in range(n)
    ]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(q * (len(values) - 1)))))
    return values[k]


def _stats(latencies: list[float], tokens: int, wall: float, clients: int, errors: int = 0) -> dict:
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "tok_s": tokens / wall,
        "latencies": latencies,
        "p50_ms": 1000 * _pct(latencies, 0.5),
        "p99_ms": 1000 * _pct(latencies, 0.99),
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


def closed_loop(items: list, clients: int, call) -> dict:
    """``clients`` threads share ``items``; each sends its next one when the last returns.
    ``call(item)`` returns the tokens generated, or None for a failed request."""
    lock = threading.Lock()
    latencies: list[float] = []
    tokens, errors = [0], [0]
    it = iter(items)

    def worker():
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            t0 = time.perf_counter()
            n = call(item)
            dt = time.perf_counter() - t0
            with lock:
                if n is None:
                    errors[0] += 1
                else:
                    latencies.append(dt)
                    tokens[0] += n

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _stats(latencies, tokens[0], time.perf_counter() - t0, clients, errors[0])


def run_level(url: str, bodies: list[dict], clients: int, max_tokens: int) -> dict:
    """One concurrency level over HTTP: ``clients`` threads share ``bodies``, one keep-alive
    connection each. Plain ``http.client``: the clients share this machine's two cores with the
    server, and it costs them 0.3 ms of CPU a request where ``requests`` costs 1.0 ms."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conns = threading.local()

    def call(body):
        conn = getattr(conns, "c", None)
        if conn is None:
            conn = conns.c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        # greedy: /generate's own default is KnowLM's (sampling at temperature 1.0)
        payload = json.dumps({**body, "parameters": {"temperature": 0.0, "max_tokens": max_tokens}}).encode()
        conn.request("POST", f"{parts.path}/generate", payload, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return json.loads(data)["num_output_tokens_cf"] if r.status == 200 else None

    return closed_loop(bodies, clients, call)


def serve_processes(app: str) -> dict[str, list]:
    """The processes a request through Serve costs CPU in: this one (the HTTP clients), Serve's
    HTTP front (its Python proxy, or HAProxy and the actor that manages it) and the app's
    replicas, found by the titles Ray gives its workers."""
    import psutil

    found: dict[str, list] = {"client": [psutil.Process()], "proxy": [], "replica": []}
    for p in psutil.process_iter(["cmdline", "name"]):
        title = " ".join(p.info["cmdline"] or ())
        if title.startswith(("ray::ProxyActor", "ray::HAProxyManager")) or p.info["name"] == "haproxy":
            found["proxy"].append(p)
        elif title.startswith(f"ray::ServeReplica:{app}:"):
            found["replica"].append(p)
    return found


def cpu_seconds(procs: dict[str, list]) -> dict[str, float]:
    import psutil

    out = {}
    for key, group in procs.items():
        out[key] = 0.0
        for p in group:
            try:
                t = p.cpu_times()
                out[key] += t.user + t.system
            except psutil.Error:  # a replica restarted: its time is lost, not double counted
                pass
    return out


def in_process_level(batcher, rows: list, clients: int) -> dict:
    """The continuous batcher without HTTP, driven the same way as the HTTP clients."""

    def call(row):
        (res,) = batcher.submit([row]).result()
        return res.num_output_tokens

    return closed_loop(rows, clients, call)


def combine(runs: list[dict]) -> dict:
    """Median throughput over repeats; latency percentiles over every request of every repeat."""
    lat = [x for r in runs for x in r["latencies"]]
    out = _stats(lat, 0, 1.0, runs[0]["clients"], sum(r["errors"] for r in runs))
    out.update(
        rps=statistics.median(r["rps"] for r in runs),
        tok_s=statistics.median(r["tok_s"] for r in runs),
        runs=[round(r["rps"], 1) for r in runs],
    )
    return out


class NaiveBaseline:
    """KnowLM's way: one request at a time through transformers.generate (in-process, no HTTP)."""

    def __init__(self, model_dir: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # what a Serve replica gets (OMP_NUM_THREADS=1 for 0.5 CPU)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def run(self, bodies: list[dict], max_tokens: int) -> dict:
        import torch

        from knowlm_ray.alpaca import build_prompt

        tok = self.tok
        latencies, tokens = [], 0
        t0 = time.perf_counter()
        for body in bodies:
            t = time.perf_counter()
            enc = tok(build_prompt(body["instruction"], body["input"]), return_tensors="pt")
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=tok.unk_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            tokens += out.shape[1] - enc["input_ids"].shape[1]
            latencies.append(time.perf_counter() - t)
        return _stats(latencies, tokens, time.perf_counter() - t0, 1)


def memory_probe(model_dir: str, quantization: str, batch: int, max_tokens: int) -> dict:
    """In this (fresh) process: resident memory of the engine after loading and at its peak."""
    import resource

    import torch

    torch.set_num_threads(1)
    from knowlm_ray.generation.continuous import ContinuousBatcher
    from knowlm_ray.generation.engine import GenerationEngine

    engine = GenerationEngine(model_dir, device="cpu", quantization=quantization)
    loaded = _rss()
    weights = _tensor_bytes(engine.model.state_dict().values())
    batcher = ContinuousBatcher(engine, batch)
    rows = [engine.prepare(r) for r in _requests(batch, max_tokens)]
    t0 = time.perf_counter()
    batcher.generate(rows)
    wall = time.perf_counter() - t0
    batcher.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "quantization": quantization,
        "weights_mib": weights / 2**20,
        "rss_mib": (loaded["RssAnon"] + loaded["RssFile"]) / 2**10,
        "anon_mib": loaded["RssAnon"] / 2**10,
        "peak_mib": peak / 2**20,
        "batch_s": wall,
    }


def _tensor_bytes(values) -> int:
    """Bytes of the tensors in a state dict; int8 layers keep (weight, bias) tuples there."""
    import torch

    total = 0
    for v in values:
        if isinstance(v, (tuple, list)):
            total += _tensor_bytes(v)
        elif isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
    return total


def _rss() -> dict[str, int]:
    """Resident memory in KiB: private (RssAnon) and file-backed (RssFile: mmapped safetensors)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def _requests(n: int, max_tokens: int):
    from knowlm_ray.generation.params import GenerateRequest, GenerationParams

    return [
        GenerateRequest(
            instruction=b["instruction"], input=b["input"], parameters=GenerationParams(max_tokens=max_tokens)
        )
        for b in _prompts(n)
    ]


def measure_memory(model_dir: str, batch: int, max_tokens: int) -> list[dict]:
    out = []
    for quant in ("none", "int8"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-probe", model_dir, quant, str(batch), str(max_tokens)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def build_model(tmp: Path, kind: str, hidden: int, layers: int) -> str:
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
    if kind == "tiny":  # the test suite's tiny model
        spec = TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172)
    else:  # LLaMA's shape ratios: head size 64, MLP 8/3 of hidden (rounded to 64)
        spec = TinySpec(
            vocab_size=3000,
            hidden=hidden,
            layers=layers,
            heads=max(1, hidden // 64),
            intermediate=round(hidden * 8 / 3 / 64) * 64,
        )
    return str(build_tiny(tmp / kind, corpus, spec))


def describe_model(model_dir: str) -> str:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    from safetensors import safe_open

    params = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                params += _numel(st.get_slice(k).get_shape())
    return (
        f"hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}, "
        f"{params / 1e6:.1f}M parameters"
    )


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def floor_app(max_tokens: int):
    """Serve's own cost, no model: a FastAPI ingress that answers ``/generate`` at once. Measured
    like the real apps, it is the most any replica behind this proxy could serve on this box."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    # No CPU reserved: Ray's figure only schedules (it caps nothing), and two apps of two 0.5-CPU
    # replicas fill this box. Access log to its file only, as the KnowLM replicas have it.
    actor = {"num_cpus": 0, "runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}}}

    @serve.deployment(name="Floor", num_replicas=1, ray_actor_options=actor, max_ongoing_requests=64)
    @serve.ingress(api)
    class Floor:
        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok"}

        @api.post("/generate")
        async def generate(self, body: dict) -> dict:
            return {"generated_text": "", "num_output_tokens_cf": max_tokens}

    return Floor.bind()


def bench_model(name: str, model: str, args, port: int) -> dict:
    from ray import serve

    from knowlm_ray.serve.app import build_app
    from knowlm_ray.serve.launch import wait_ready

    requests_n = args.requests if name == "tiny" else args.compute_requests
    max_tokens = args.max_tokens if name == "tiny" else args.compute_max_tokens
    bodies = _prompts(requests_n)
    t0 = time.perf_counter()
    for setup in SETUPS:
        serve.run(
            build_app(
                {
                    "model": model,
                    "num_replicas": args.replicas,
                    "batching": setup,
                    "max_batch_size": args.batch_size,
                    "batch_wait_timeout_s": 0.01,
                    "max_ongoing_requests": 64,
                    "max_waiting_requests": 64,
                    "request_timeout_s": 600,
                }
            ),
            name=setup,
            route_prefix=f"/{setup}",
            blocking=False,
        )
    serve.run(floor_app(max_tokens), name="floor", route_prefix="/floor", blocking=False)
    for setup in (*SETUPS, "floor"):
        wait_ready(f"http://127.0.0.1:{port}/{setup}")
        run_level(f"http://127.0.0.1:{port}/{setup}", bodies[:4], 2, max_tokens)  # warm-up
    print(f"[{name}] both apps ready in {time.perf_counter() - t0:.1f}s", flush=True)
    from knowlm_ray.generation.continuous import ContinuousBatcher
    from knowlm_ray.generation.engine import GenerationEngine

    naive_engine = NaiveBaseline(model)  # sets 1 torch thread for this process
    naive_engine.run(bodies[:1], max_tokens)  # warm-up
    engine = GenerationEngine(model, device="cpu")
    batcher = ContinuousBatcher(engine, args.batch_size)
    rows = [engine.prepare(r) for r in _requests(requests_n, max_tokens)]
    batcher.generate(rows[:2])  # warm-up
    naive_runs: list[dict] = []
    local_runs: list[dict] = []
    load0 = os.getloadavg()
    results: dict[str, list[dict]] = {s: [] for s in SETUPS}
    procs = {setup: serve_processes(setup) for setup in (*SETUPS, "floor")}
    # CPU seconds per process over the top level's runs (and the continuous replica's decoding
    # thread): where a request's CPU goes on its way through Serve
    cpu: dict[str, dict[str, float]] = {s: {"requests": 0} for s in (*SETUPS, "floor")}
    floor_runs: list[dict] = []
    for c in args.clients:
        top = c == max(args.clients)
        runs: dict[str, list[dict]] = {s: [] for s in (*SETUPS, "floor")}
        for _ in range(args.repeats):
            for setup in (*SETUPS, "floor") if top else SETUPS:
                if top:
                    before, eng0 = cpu_seconds(procs[setup]), _engine_cpu_s(setup)
                runs[setup].append(run_level(f"http://127.0.0.1:{port}/{setup}", bodies, c, max_tokens))
                if top:
                    after, eng1 = cpu_seconds(procs[setup]), _engine_cpu_s(setup)
                    for key in before:
                        cpu[setup][key] = cpu[setup].get(key, 0.0) + after[key] - before[key]
                    if eng0 is not None and eng1 is not None and args.replicas == 1:  # one replica's thread
                        cpu[setup]["engine"] = cpu[setup].get("engine", 0.0) + eng1 - eng0
                    cpu[setup]["requests"] += len(runs[setup][-1]["latencies"])
            if top:  # interleaved with the Serve runs: the same load hits them all
                naive_runs.append(naive_engine.run(bodies, max_tokens))
                local_runs.append(in_process_level(batcher, rows, c))
        if top:
            floor_runs = runs["floor"]
        for setup in SETUPS:
            res = combine(runs[setup])
            results[setup].append(res)
            print(
                f"  [{name}] {setup:>10} {c:>3} clients: {res['rps']:.1f} req/s {res['runs']}, p50 "
                f"{res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, errors {res['errors']}",
                flush=True,
            )
    load1 = os.getloadavg()
    batcher.close()
    steps = serve.get_app_handle("continuous").get_stats.remote().result()["batcher"]
    for setup in (*SETUPS, "floor"):
        serve.delete(setup)
    naive = combine(naive_runs)
    print(f"  [{name}] naive: {naive['rps']:.2f} req/s {naive['runs']}, mean {naive['mean_ms']:.0f} ms", flush=True)
    local = combine(local_runs)
    print(
        f"  [{name}] in-process continuous, {local['clients']} threads: {local['rps']:.2f} req/s {local['runs']}",
        flush=True,
    )
    memory = measure_memory(model, args.batch_size, max_tokens)
    print(f"  [{name}] memory: {memory}", flush=True)
    return {
        "name": name,
        "model": model,
        "requests": requests_n,
        "max_tokens": max_tokens,
        "results": results,
        "naive": naive,
        "local": local,
        "steps": steps,
        "cpu": cpu,
        "floor": combine(floor_runs),
        "memory": memory,
        "load": (load0[0], load1[0]),
        "prompt_tokens": statistics.fmean(len(r.input_ids) for r in rows),
    }


def _engine_cpu_s(app: str) -> float | None:
    """CPU seconds of the app's continuous decoding thread (None: not continuous)."""
    from ray import serve

    if app not in SETUPS:
        return None
    batcher = serve.get_app_handle(app).get_stats.remote().result()["batcher"]
    return None if batcher is None else batcher["thread_cpu_s"]


def report(b: dict, args, cmd: str) -> list[str]:
    naive = b["naive"]
    seq16 = 16 * naive["mean_ms"]
    lines = [
        f"\n### {b['name']} model — {describe_model(b['model'])}\n",
        f"{b['requests']} requests per level (prompts of {b['prompt_tokens']:.0f} tokens on average: KnowLM's "
        f"alpaca template), greedy, max_tokens {b['max_tokens']}; 1-min load average "
        f"{b['load'][0]:.1f} before and {b['load'][1]:.1f} after its Serve runs.\n",
        "| setup | clients | req/s | vs naive | tokens/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, label in SETUPS.items():
        for r in b["results"][setup]:
            lines.append(
                f"| {label} (max_batch_size {args.batch_size}) | {r['clients']} | {r['rps']:.1f} {r['runs']} | "
                f"{r['rps'] / naive['rps']:.1f}x | {r['tok_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['errors']} |"
            )
    local = b["local"]
    lines.append(
        f"| in-process continuous batcher, no HTTP | {local['clients']} | {local['rps']:.2f} {local['runs']} | "
        f"{local['rps'] / naive['rps']:.1f}x | {local['tok_s']:.0f} | {local['p50_ms']:.0f} | "
        f"{local['p99_ms']:.0f} | 0 |"
    )
    lines.append(
        f"| naive: transformers.generate, one at a time, in-process | 1 | {naive['rps']:.2f} {naive['runs']} | 1.0x | "
        f"{naive['tok_s']:.0f} | {naive['p50_ms']:.0f} | {naive['p99_ms']:.0f} | 0 |"
    )
    verdicts = []
    for setup in SETUPS:
        top = next((r for r in b["results"][setup] if r["clients"] == 16), None)
        if top is None:
            continue
        x = top["rps"] / naive["rps"]
        ok = x >= GOAL_X and top["p99_ms"] <= seq16
        verdicts.append(
            f"{setup}: {x:.1f}x the naive throughput, p99 {top['p99_ms']:.0f} ms vs {seq16:.0f} ms for "
            f"16 sequential requests — goal {'met' if ok else 'not met'}"
        )
    if verdicts:
        lines.append(
            "\nAt 16 clients (goal: >= 5x naive req/s, p99 <= 16 x naive mean latency): " + "; ".join(verdicts) + ".\n"
        )
    by_rows = {int(k): v for k, v in b["steps"]["decode_step_ms_by_rows"].items()}
    if by_rows:
        one, most = min(by_rows), max(by_rows)
        lines.append(
            f"What a shared forward pass costs in the continuous replica (its own timers, whole run): a "
            f"decode step over {one} row(s) {by_rows[one]:.1f} ms, over {most} rows {by_rows[most]:.1f} ms "
            f"({by_rows[most] / by_rows[one]:.1f}x the time for {most / one:.0f}x the tokens); prefill "
            f"{b['steps']['prefill_ms_per_token']:.2f} ms per prompt token.\n"
        )
    top = max(args.clients)
    parts = []
    for setup in (*SETUPS, "floor"):
        c = b["cpu"][setup]
        n = max(c["requests"], 1)
        ms = {k: 1000 * v / n for k, v in c.items() if k != "requests"}
        fwd = f" (its decoding thread {ms['engine']:.1f})" if "engine" in ms else ""
        replicas = "replicas" if args.replicas > 1 and setup in SETUPS else "replica"
        parts.append(
            f"{setup}: client {ms['client']:.1f}, {args.ingress} {ms['proxy']:.1f}, {replicas} {ms['replica']:.1f}{fwd} "
            f"= {ms['client'] + ms['proxy'] + ms['replica']:.1f}"
        )
    lines.append(
        f"CPU per request at {top} clients, ms (process CPU time over those runs / requests): "
        + "; ".join(parts)
        + f". The naive baseline: {naive['mean_ms']:.1f} ms of one core, in-process.\n"
    )
    floor = b["floor"]
    lines.append(
        f"Serve's floor (`floor`: a FastAPI ingress that answers `/generate` at once, no model, 1 replica, "
        f"measured alternately with the apps above): {floor['rps']:.0f} req/s {floor['runs']} at {top} clients "
        f"= {floor['rps'] / naive['rps']:.1f}x the naive baseline, p50 {floor['p50_ms']:.0f} ms — the most "
        "any one replica behind this ingress can answer on this machine.\n"
    )
    lines += [
        "\nMemory per replica (a fresh process holding only the engine; Python + torch + transformers "
        "alone take most of it at these sizes):\n",
        "| precision | weights in memory | process RSS after load (private) | process peak RSS (load + "
        f"one batch) | one batch of {args.batch_size} x {b['max_tokens']} tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in b["memory"]:
        label = "fp32" if m["quantization"] == "none" else "int8 (torch dynamic)"
        lines.append(
            f"| {label} | {m['weights_mib']:.1f} MiB | {m['rss_mib']:.0f} MiB ({m['anon_mib']:.0f} MiB) | "
            f"{m['peak_mib']:.0f} MiB | {m['batch_s']:.2f} s |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-probe"]:
        model, quant, batch, max_tokens = argv[1], argv[2], int(argv[3]), int(argv[4])
        print(json.dumps(memory_probe(model, quant, batch, max_tokens)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "compute"], choices=["tiny", "compute", "given"])
    ap.add_argument("--model", help="HF model dir for --models given")
    ap.add_argument("--compute-hidden", type=int, default=512)
    ap.add_argument("--compute-layers", type=int, default=8)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=64, help="requests per level, tiny model")
    ap.add_argument("--compute-requests", type=int, default=24, help="requests per level, other models")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--compute-max-tokens",
        type=int,
        default=96,
        help="new tokens per request, other models (KnowLM's scripts allow 512)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="max_batch_size of both Serve apps")
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements per level")
    ap.add_argument("--replicas", type=int, default=1, help="replicas per Serve app (fixed, no autoscaling)")
    ap.add_argument(
        "--ingress",
        choices=["proxy", "haproxy"],
        default="proxy",
        help="Serve's HTTP front: Ray's Python proxy or HAProxy (knowlm_ray/serve/ingress.py)",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/serve.md"))
    args = ap.parse_args(argv)
    if "given" in args.models and not args.model:
        ap.error("--models given needs --model DIR")

    from knowlm_ray.runtime import init_ray, set_default_env
    from knowlm_ray.serve.ingress import use_ingress

    set_default_env()
    use_ingress(args.ingress)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    models = {
        kind: (args.model if kind == "given" else build_model(tmp, kind, args.compute_hidden, args.compute_layers))
        for kind in args.models
    }
    init_ray()
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    benches = [bench_model(kind, model, args, port) for kind, model in models.items()]
    serve.shutdown()
    import ray

    ray.shutdown()

    exe = Path(sys.executable)
    py = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else "python"
    cmd = f"{py} benchmarks/serve.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        f"\n## serve — {time.strftime('%Y-%m-%d %H:%M')}\n",
        f"`{cmd.strip()}`\n",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU, shared with "
        "other engineers' jobs during the run (load averages below). "
        f"{'One replica' if args.replicas == 1 else f'{args.replicas} replicas'} per app (0.5 CPU, 1 torch "
        f"thread each) behind Serve's {'HAProxy ingress' if args.ingress == 'haproxy' else 'Python proxy'} "
        f"(`--ingress {args.ingress}`), both apps measured alternately, {args.repeats} repeats (req/s = median, per-repeat values in "
        "brackets); p50/p99 over all requests of all repeats; client threads on the same machine.",
    ]
    for b in benches:
        lines += report(b, args, cmd)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(
            "# Serving benchmarks\n\nResults of `benchmarks/serve.py` (run from the repository root), newest last.\n",
            encoding="utf-8",
        )
    with out.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
