"""Key-statistics throughput: a plain loop vs the Ray Data actor pool with 1 and 2 actors, same rows.

    .venv/bin/python benchmarks/edit_stats.py [--rows 512] [--row-tokens 128] [--layers 2,3]
        [--block-rows 32] [--batch-rows 8] [--repeat 2] [--out benchmarks/results/edit_stats.md]

Same model (a fresh random LLaMA, hidden 256 x 4 layers, intermediate 688), same corpus (Arrow
shards of ``--rows`` rows of ``--row-tokens`` random token ids), same blocks, same modules:

* ``plain``: ``knowlm_ray.edit.stats.run(use_ray=False)``: the blocks one after another in this
  process, 1 torch thread (what one actor gets).
* ``ray N``: ``run`` with an ActorPoolStrategy of N actors (0.5 CPU, 1 torch thread each).

Each mode starts from an empty cache. Reported: the map window (first block's start to last
block's end: the summing itself, without Ray Data's start, actor start and model load), tokens/s
over it, the steady rate (each actor's tokens over its own first-start-to-last-end span, summed
over actors: what the pool does once every actor is up, without one actor's later start), and
the whole call's wall time. A small warm-up job runs first so no timed run pays Ray
Data's first start. The C of every mode is compared with the plain loop's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(root: Path, rows: int, row_tokens: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from knowlm_ray.corpus.shards import write_arrow_file

    cfg = LlamaConfig(
        vocab_size=3000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model_dir = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 3000, (rows, row_tokens), generator=g).int().tolist()
    data = root / "corpus"
    per = max(1, rows // 4)
    for k, lo in enumerate(range(0, rows, per)):
        part = ids[lo : lo + per]
        table = pa.table(
            {
                "input_ids": pa.array(part, pa.list_(pa.int32())),
                "doc_id": [f"d{lo + i}" for i in range(len(part))],
                "source": ["bench"] * len(part),
            }
        )
        write_arrow_file(table, data / "shards" / f"part-{k:05d}.arrow")
    return model_dir, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--row-tokens", type=int, default=128)
    ap.add_argument("--layers", default="2,3")
    ap.add_argument("--block-rows", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "edit_stats.md"))
    a = ap.parse_args()

    import torch

    from knowlm_ray.edit.stats import load_cached_stats, run
    from knowlm_ray.edit.stats_config import EditStatsConfig
    from knowlm_ray.runtime import init_ray

    layers = [int(x) for x in a.layers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench_edit_stats_"))
    model_dir, data = build(root, a.rows, a.row_tokens)
    init_ray(num_cpus=2)

    def cfg(cache: Path, actors: int = 1, rows: int = a.rows) -> EditStatsConfig:
        return EditStatsConfig(
            model=str(model_dir),
            data=str(data),
            layers=layers,
            n_samples=rows,
            block_rows=a.block_rows,
            batch_rows=a.batch_rows,
            num_actors=actors,
            cpus_per_actor=0.5,
            threads_per_actor=1,
            cache_dir=str(cache),
            fold_every_s=3600,
        )

    run(cfg(root / "warm", 2, rows=2 * a.block_rows), progress=False)  # Ray Data's first start
    modes = [("plain", 0), ("ray 1 actor", 1), ("ray 2 actors", 2)]
    results: dict[str, list[dict]] = {m: [] for m, _ in modes}
    mom2: dict[str, torch.Tensor] = {}
    for rep in range(a.repeat):
        for name, actors in modes:
            cache = root / f"cache-{rep}-{actors}"
            t0 = time.perf_counter()
            s = run(cfg(cache, max(actors, 1)), progress=False, use_ray=actors > 0)
            s["wall_s"] = time.perf_counter() - t0
            results[name].append(s)
            mom2[name] = load_cached_stats(model_dir, f"model.layers.{layers[-1]}.mlp.down_proj", cache_dir=cache)[0]
            print(
                f"{name:>13} rep {rep}: window {s['map_window_s']:.2f}s, {s['tokens_per_s']:.0f} tokens/s, "
                f"steady {s['steady_tokens_per_s']:.0f} tokens/s, "
                f"wall {s['wall_s']:.1f}s, actors used {s['actors_used']}",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base = med("plain", "tokens_per_s")
    one = med("ray 1 actor", "tokens_per_s")
    one_steady = med("ray 1 actor", "steady_tokens_per_s")
    lines = [
        f"# edit_stats benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
        "",
        f"`{' '.join([Path(sys.executable).name, 'benchmarks/edit_stats.py'] + sys.argv[1:])}`",
        "",
        f"{a.rows} rows x {a.row_tokens} tokens, layers {layers} of a 4-layer hidden-256 LLaMA, "
        f"blocks of {a.block_rows} rows, {a.batch_rows} rows per forward; median of {a.repeat}",
        "",
        "| mode | map window s | tokens/s | vs plain | vs 1 actor | steady tokens/s | steady vs 1 actor "
        "| wall s | max abs diff of C vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in modes:
        tps = med(name, "tokens_per_s")
        diff = float((mom2[name] - mom2["plain"]).abs().max())
        lines.append(
            f"| {name} | {med(name, 'map_window_s'):.2f} | {tps:.0f} | {tps / base:.2f}x | {tps / one:.2f}x | "
            f"{med(name, 'steady_tokens_per_s'):.0f} | {med(name, 'steady_tokens_per_s') / one_steady:.2f}x | "
            f"{med(name, 'wall_s'):.1f} | {diff:.2e} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
