"""Fair admission benchmark (issue 18, item 2): the latency of one-row ``POST /generate`` requests
while a ~750-row ``POST /extract`` runs, against the same requests on the idle server, side by
side in one run. Goal: p99 under load <= 2x the idle p99.

    .venv/bin/python benchmarks/fair_admission.py
    .venv/bin/python benchmarks/fair_admission.py --requests 60 --extract-max-tokens 32
    .venv/bin/python benchmarks/fair_admission.py --model artifacts/demo/merged

One Serve replica (continuous batching, ``max_batch_size`` 16: the defaults), the test suite's
tiny model built into a temp dir (or ``--model``). The big job is NER over a ~70,000-character
text with 24 labels: one prompt per text chunk per label batch, ~790 rows, decoded free (``"constrained":
false``, so the grammar's cost does not blur the scheduling) with ``--extract-max-tokens`` new
tokens each (random weights rarely emit EOS: every row runs its budget). ``--clients`` client
threads send ``--requests`` greedy /generate requests (``--max-tokens`` new tokens) one after
another: first on the idle server, then while the /extract runs (it must still run when the last
one returns, or the run says so), then idle again; the idle figures pool both idle phases, so a
machine whose load drifts hits both sides. Before fair admission the 750 rows joined the batch
as one block past ``max_batch_size`` and a /generate behind them waited for all of them.

The markdown (with the command) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_X = 2.0
SENTENCES = [
    "浙江大学位于浙江省杭州市，是一所综合性研究型大学。",
    "鲁迅，原名周树人，1881年出生于浙江绍兴，是中国现代文学的奠基人之一。",
    "Marie Curie was born in Warsaw and worked in Paris with Pierre Curie. ",
    "知识图谱由实体、关系和属性组成，常用于问答和推荐。",
    "The river Thames flows through Oxford and London before reaching the North Sea. ",
]
LABELS = [
    "人物", "地点", "组织", "时间", "作品", "事件", "学科", "职业", "国家", "城市", "河流", "大学",
    "奖项", "语言", "朝代", "机构", "产品", "疾病", "药物", "物种", "数字", "货币", "法律", "技术",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def extract_body(chars: int, max_tokens: int) -> dict:
    text, i = "", 0
    while len(text) < chars:
        text += SENTENCES[i % len(SENTENCES)]
        i += 1
    return {
        "task": "ner",
        "text": text[:chars],
        "schema": LABELS,
        "lang": "zh",
        "constrained": False,
        "parameters": {"temperature": 0, "max_tokens": max_tokens},
    }


def count_rows(model: str, body: dict) -> int:
    from transformers import AutoTokenizer

    from knowlm_ray.ie.extract import plan_extraction

    tok = AutoTokenizer.from_pretrained(model)
    return len(plan_extraction(body["task"], body["text"], body["schema"], body["lang"], tokenizer=tok).texts)


def generate_phase(url, n: int, clients: int, max_tokens: int) -> list[float]:
    """``n`` requests from ``clients`` threads, each sending its next one when the last returns.
    ``url``: the server's, or (``--in-process``) a function sending request ``i`` to a batcher."""
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    left = list(range(n))

    def worker():
        while True:
            with lock:
                if not left:
                    return
                i = left.pop()
            body = {
                "instruction": f"请介绍一下知识图谱。（第{i}题）",
                "parameters": {"temperature": 0, "max_tokens": max_tokens},
            }
            t0 = time.perf_counter()
            if callable(url):
                url(body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt * 1000)
                continue
            r = requests.post(f"{url}/generate", json=body, timeout=600)
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code == 200:
                    latencies.append(dt * 1000)
                else:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"/generate failed: {errors[:3]}")
    return latencies


def in_process(args, model: str, body: dict):
    """The same phases against a ``ContinuousBatcher`` in this process: no HTTP, no Serve, no
    client processes sharing the CPU; what the batcher's scheduling alone gives."""
    import torch

    from knowlm_ray.alpaca import build_prompt
    from knowlm_ray.generation.continuous import DEFAULT_MAX_PREFILL_TOKENS, ContinuousBatcher
    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.generation.params import GenerationParams
    from knowlm_ray.ie.extract import plan_extraction

    torch.set_num_threads(1)  # as a replica under Ray (OMP_NUM_THREADS=1)
    engine = GenerationEngine(model)
    budget = DEFAULT_MAX_PREFILL_TOKENS if args.max_prefill_tokens is None else (args.max_prefill_tokens or None)
    batcher = ContinuousBatcher(engine, args.batch_size, budget)
    plan = plan_extraction(body["task"], body["text"], body["schema"], body["lang"], tokenizer=engine.tokenizer)
    big = [engine.prepare_prompt(t, GenerationParams(**body["parameters"])) for t in plan.texts]

    def send(req: dict) -> None:
        row = engine.prepare_prompt(build_prompt(req["instruction"]), GenerationParams(**req["parameters"]))
        batcher.submit([row]).result()

    generate_phase(send, 4, 1, args.max_tokens)
    idle = generate_phase(send, args.requests, args.clients, args.max_tokens)
    t0 = time.perf_counter()
    job = batcher.submit(big)
    while batcher.active < args.batch_size:
        time.sleep(0.005)
    before = batcher.stats()
    loaded = generate_phase(send, args.requests, args.clients, args.max_tokens)
    after = batcher.stats()
    overlapped = not job.done()
    answers = len(job.result())
    extract = {"status": "in-process", "answers": answers, "seconds": time.perf_counter() - t0}
    idle += generate_phase(send, args.requests, args.clients, args.max_tokens)
    stats = batcher.stats()
    batcher.close()
    return idle, loaded, extract, before, after, stats, overlapped


def over_serve(args, model: str, body: dict, rows: int):
    """The phases against one Serve replica over HTTP (the issue's benchmark)."""
    import requests

    from knowlm_ray.runtime import init_ray

    init_ray()
    from ray import serve

    from knowlm_ray.serve.app import APP_NAME, build_app
    from knowlm_ray.serve.launch import wait_ready

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(
            {
                "model": model,
                "num_replicas": 1,
                "max_batch_size": args.batch_size,
                "max_rows_per_request": max(rows, 1024),
                "max_extract_chars": max(args.extract_chars, 100_000),
                "request_timeout_s": 3600,
                **({} if args.max_prefill_tokens is None else {"max_prefill_tokens": args.max_prefill_tokens or None}),
            }
        ),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    handle = serve.get_app_handle(APP_NAME)
    generate_phase(url, 4, 1, args.max_tokens)  # warm-up: first-request costs out of the figures

    print(f"[fair] idle: {args.requests} x /generate", flush=True)
    idle = generate_phase(url, args.requests, args.clients, args.max_tokens)

    extract: dict = {}

    def run_extract():
        t0 = time.perf_counter()
        r = requests.post(f"{url}/extract", json=body, timeout=3600)
        extract.update(status=r.status_code, seconds=time.perf_counter() - t0, answers=len(r.json().get("raw", [])))

    worker = threading.Thread(target=run_extract)
    worker.start()
    while handle.get_stats.remote().result()["batcher"]["active_rows"] < args.batch_size:
        time.sleep(0.05)  # the big job fills the batch
    print(f"[fair] under /extract: {args.requests} x /generate", flush=True)
    before = handle.get_stats.remote().result()["batcher"]
    loaded = generate_phase(url, args.requests, args.clients, args.max_tokens)
    after = handle.get_stats.remote().result()["batcher"]
    overlapped = worker.is_alive()
    print("[fair] idle again", flush=True)
    worker.join()
    idle += generate_phase(url, args.requests, args.clients, args.max_tokens)
    stats = handle.get_stats.remote().result()["batcher"]
    serve.shutdown()
    import ray

    ray.shutdown()
    return idle, loaded, extract, before, after, stats, overlapped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF model dir (default: the test suite's tiny model, built into a temp dir)")
    ap.add_argument("--requests", type=int, default=40, help="/generate requests per phase")
    ap.add_argument("--clients", type=int, default=2, help="client threads sending /generate")
    ap.add_argument("--max-tokens", type=int, default=16, help="new tokens per /generate")
    ap.add_argument("--extract-chars", type=int, default=70000, help="characters of the /extract text")
    ap.add_argument("--extract-max-tokens", type=int, default=32, help="new tokens per /extract row")
    ap.add_argument("--batch-size", type=int, default=16, help="the replica's max_batch_size")
    ap.add_argument(
        "--max-prefill-tokens", type=int, help="the replica's max_prefill_tokens (default: the config's); 0: no limit"
    )
    ap.add_argument(
        "--in-process", action="store_true", help="drive a ContinuousBatcher in this process (no HTTP, no Serve)"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/fair_admission.md"))
    args = ap.parse_args(argv)

    from knowlm_ray.runtime import set_default_env

    set_default_env()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = args.model
    if model is None:
        from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

        corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
        tmp = Path(tempfile.mkdtemp(prefix="bench_fair_"))
        model = str(build_tiny(tmp / "tiny", corpus, TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172)))
    body = extract_body(args.extract_chars, args.extract_max_tokens)
    rows = count_rows(model, body)
    print(f"[fair] /extract: {len(body['text'])} characters x {len(LABELS)} labels = {rows} rows", flush=True)
    if args.in_process:
        idle, loaded, extract, before, after, stats, overlapped = in_process(args, model, body)
    else:
        idle, loaded, extract, before, after, stats, overlapped = over_serve(args, model, body, rows)

    p99_idle, p99_loaded = _pct(idle, 0.99), _pct(loaded, 0.99)
    ratio = p99_loaded / p99_idle
    exe = Path(sys.executable)
    py = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else "python"
    cmd = f"{py} benchmarks/fair_admission.py " + " ".join(shlex.quote(a) for a in argv)
    steps = stats["decode_step_ms_by_rows"]
    lines = [
        f"\n## fair admission — {time.strftime('%Y-%m-%d %H:%M')}\n",
        f"`{cmd.strip()}`\n",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end. "
        f"{'In-process ContinuousBatcher (no HTTP, no Serve)' if args.in_process else 'One replica'}, continuous batching, "
        f"max_batch_size {args.batch_size}; {args.clients} client threads; /generate greedy, {args.max_tokens} "
        f"new tokens; /extract {rows} rows x {args.extract_max_tokens} new tokens, free decoding, "
        f"status {extract.get('status')}, {extract.get('answers')} answers in {extract.get('seconds', 0):.1f} s"
        f"{'' if overlapped else ' (it ended before the last loaded /generate: the loaded figures are partly idle)'}.\n",
        "| /generate | requests | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| idle server (before and after) | {len(idle)} | {statistics.median(idle):.0f} | {p99_idle:.0f} | "
        f"{max(idle):.0f} |",
        f"| beside the {rows}-row /extract | {len(loaded)} | {statistics.median(loaded):.0f} | {p99_loaded:.0f} | "
        f"{max(loaded):.0f} |",
        "",
        f"p99 beside the big job / idle: **{ratio:.2f}x** (goal <= {GOAL_X:g}x: "
        f"{'met' if ratio <= GOAL_X else 'NOT met'}). Rows preempted to give newcomers their share while the "
        f"/generate requests ran: {after['preempted_rows'] - before['preempted_rows']}. Decode step time by rows "
        f"in the batch (ms): 1 row {steps.get(1, steps.get('1', '-'))}, {args.batch_size} rows "
        f"{steps.get(args.batch_size, steps.get(str(args.batch_size), '-'))}.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(
            "# Fair admission benchmarks\n\nResults of `benchmarks/fair_admission.py` (run from the repository "
            "root), newest last.\n",
            encoding="utf-8",
        )
    with out.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
