"""batch_extract throughput: documents/s of a sequential loop vs the Ray Data actor pool (1 and 2 actors).

    .venv/bin/python benchmarks/batch_extract.py [--docs 256] [--max-tokens 32] [--block-size 8]
        [--docs-per-call 4] [--tasks ner] [--repeat 2] [--seq-threads 1] [--model DIR]
        [--out benchmarks/results/extract.md]

Same model (a fresh random tiny LLaMA, hidden 256 x 4 layers, unless --model), same documents (the sample IE
texts), same prompts and decoding (greedy, ``max_tokens`` new tokens: a random model never stops
early, so every prompt costs the same), same run:

* ``sequential``: one GenerationEngine in this process, a plain loop over the documents through
  the same core the actors run (``extract_documents``), ``docs_per_call`` documents per generate
  call, 1 torch thread (what one actor gets; ``--seq-threads 1,2`` adds more).
* ``ray N``: ``knowlm_ray.ie.batch.run`` with an ActorPoolStrategy of N actors (0.5 CPU, 1 torch
  thread each), wall time of the whole job (planning, actor start and model load, extraction, part
  files, final merge). A small warm-up job runs first so no timed run pays Ray Data's first start.

Sequential times include loading the model too (shown separately). The records of every mode are
compared: their raw answers should agree (greedy decoding, identical batches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "ie"


def _docs_file(path: Path, n: int) -> None:
    recs = [json.loads(line) for line in (SAMPLE / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [
        {
            "id": f"{recs[i % len(recs)]['id']}#{i // len(recs)}",
            "text": recs[i % len(recs)]["text"],
            "lang": recs[i % len(recs)]["lang"],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _sequential(cfg, threads: int) -> tuple[dict, list[dict]]:
    import torch

    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.ie.batch import extract_documents, load_schema_spec, plan_blocks, read_block
    from knowlm_ray.ie.extract import engine_generate_fn

    before = torch.get_num_threads()
    t0 = time.perf_counter()
    engine = GenerationEngine(cfg.model, num_threads=threads)
    t1 = time.perf_counter()
    docs = [d for b in plan_blocks(cfg) for d in read_block(b, cfg)[0]]
    records = extract_documents(
        docs,
        cfg.tasks,
        load_schema_spec(cfg.schema_),
        engine_generate_fn(engine, {"max_tokens": cfg.max_tokens}),
        docs_per_call=cfg.docs_per_call,
        fmt=cfg.format,
        max_chars=cfg.max_chars,
    )
    t2 = time.perf_counter()
    torch.set_num_threads(before)
    return {
        "mode": f"sequential, {threads} torch thread{'s' if threads > 1 else ''}",
        "actors": 0,
        "docs": len(records),
        "load_s": t1 - t0,
        "wall_s": t2 - t0,
        "extract_s": t2 - t1,
    }, records


def _ray(cfg, actors: int) -> tuple[dict, list[dict]]:
    from knowlm_ray.ie.batch import iter_records, run

    cfg = cfg.model_copy(update={"num_actors": actors, "out_dir": f"{cfg.out_dir}-ray{actors}"})
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run(cfg, progress=False)
    wall = time.perf_counter() - t0
    return {
        "mode": f"Ray Data, ActorPoolStrategy(size={actors})",
        "actors": actors,
        "docs": summary["documents"],
        "load_s": None,
        "wall_s": wall,
        "extract_s": summary["extract_window_s"],
    }, list(iter_records(cfg.out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--docs-per-call", type=int, default=4)
    ap.add_argument("--tasks", default="ner", help="comma-separated: ner,re,ee")
    ap.add_argument("--model", help="HF model dir (default: build a fresh tiny model, --hidden/--layers)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the best wall time per mode is reported")
    ap.add_argument(
        "--seq-threads",
        default="1",
        help="torch thread counts for the sequential loop, e.g. 1,2 (2 threads on a busy 2-core box "
        "can be 30x slower: oversubscribed OpenMP)",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "extract.md"))
    args = ap.parse_args(argv)
    if args.block_size % args.docs_per_call:
        ap.error("--block-size must be a multiple of --docs-per-call (identical batches in every mode)")

    from knowlm_ray.runtime import init_ray, set_default_env

    set_default_env()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from knowlm_ray.config import BatchExtractConfig

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        model = args.model
        if not model:
            from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

            spec = TinySpec(hidden=args.hidden, layers=args.layers, intermediate=int(args.hidden * 8 / 3 + 0.5))
            model = str(build_tiny(work / "model", [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()], spec))
        _docs_file(work / "docs.jsonl", args.docs)
        cfg = BatchExtractConfig.model_validate(
            {
                "model": model,
                "input": str(work / "docs.jsonl"),
                "schema": str(SAMPLE / "schema.json"),
                "tasks": args.tasks.split(","),
                "out_dir": str(work / "kg"),
                "block_size": args.block_size,
                "docs_per_call": args.docs_per_call,
                "max_tokens": args.max_tokens,
                "cpus_per_actor": 0.5,
                "threads_per_actor": 1,
            }
        )
        load_before = os.getloadavg()
        threads = [int(t) for t in args.seq_threads.split(",")]
        init_ray(num_cpus=os.cpu_count() or 2)
        _ray(cfg.model_copy(update={"limit": args.block_size, "out_dir": str(work / "warmup")}), 1)
        modes = [("seq", t) for t in threads] + [("ray", 1), ("ray", 2)]
        runs: dict[tuple, list[dict]] = {m: [] for m in modes}
        outputs: dict[tuple, list[dict]] = {}
        for round_ in range(args.repeat):  # modes interleaved, so a load spike hits them alike
            for mode in modes:
                row, recs = _sequential(cfg, mode[1]) if mode[0] == "seq" else _ray(cfg, mode[1])
                runs[mode].append(row)
                outputs.setdefault(mode, recs)
                print(
                    f"round {round_ + 1}: {row['mode']}: {row['docs'] / row['wall_s']:.2f} docs/s "
                    f"(load {os.getloadavg()[0]:.1f})",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
        rows = []
        for mode in modes:  # the best of the rounds (the least disturbed by other load)
            best = min(runs[mode], key=lambda r: r["wall_s"])
            rows.append({**best, "walls": [r["wall_s"] for r in runs[mode]]})
        first = outputs[modes[0]]
        key = [(r["id"], r["raw"]) for r in first]
        agree = [sum(a == b for a, b in zip(key, [(r["id"], r["raw"]) for r in outputs[m]])) for m in modes]
        prompts = sum(len(r["raw"]) for r in first)
        _write_report(args, argv, rows, agree, prompts, load_before, load_after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _write_report(args, argv, rows, agree, prompts, load_before, load_after) -> None:
    import ray
    import torch
    import transformers

    base = rows[0]["docs"] / rows[0]["wall_s"]
    cmd = " ".join([".venv/bin/python benchmarks/batch_extract.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# batch_extract throughput",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Ray {ray.__version__}; "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared, busy box).",
        "",
        f"Workload: {rows[0]['docs']} documents (data/sample/ie texts, cycled), tasks `{args.tasks}`, {prompts} prompts, "
        f"greedy decoding of exactly {args.max_tokens} new tokens per prompt (random tiny model: no early EOS), "
        f"{args.docs_per_call} documents per generate call, blocks of {args.block_size} documents. "
        f"{args.repeat} rounds with the modes interleaved; the table shows each mode's best round "
        f"(all rounds' wall times in the last column).",
        "",
        "| mode | actors | documents | model load s | wall s | documents/s (wall) | vs sequential (1 thread) "
        "| extraction s | documents/s (extraction) | same answers | wall s, every round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row, same in zip(rows, agree):
        dps = row["docs"] / row["wall_s"]
        load = f"{row['load_s']:.2f}" if row["load_s"] is not None else "in wall"
        eps = row["docs"] / row["extract_s"] if row["extract_s"] else float("nan")
        lines.append(
            f"| {row['mode']} | {row['actors']} | {row['docs']} | {load} | {row['wall_s']:.2f} | "
            f"{dps:.2f} | {dps / base:.2f}x | {row['extract_s']:.2f} | {eps:.2f} | {same}/{row['docs']} | "
            f"{', '.join(f'{w:.1f}' for w in row['walls'])} |"
        )
    lines += [
        "",
        "Ray wall times are whole jobs: block planning, actor start-up and model load in each actor, "
        "extraction, atomic part files, and the final records.jsonl / triples.parquet / summary.json "
        'merge. "extraction s" leaves out the fixed costs: for the sequential loop the time after the '
        "model is loaded, for Ray the span from the first block's start to the last block's end in the "
        'actors (`extract_window_s` of the job summary). "same answers" counts documents whose raw '
        "model answers equal the first row's.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
