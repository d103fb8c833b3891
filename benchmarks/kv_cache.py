"""Decode-step time of the continuous batcher at a full batch: this checkout against another
(e.g. the commit before the in-place KV cache), side by side, alternating.

    .venv/bin/python benchmarks/kv_cache.py --other /tmp/base [--rows 16] [--prompt-tokens 400] [--tokens 32] [--repeat 3]

``--other`` is a checkout of the repository (``git worktree add /tmp/base <commit>``) run with
this same interpreter. Each run builds nothing: it uses the test suite's tiny model (built once
into ``--model-dir``), submits ``--rows`` greedy rows of one ``--prompt-tokens`` prompt with ``--tokens`` new
tokens each to a ``ContinuousBatcher`` of that many rows (one torch thread) and reports the mean
decode step time at the full batch (``stats()["decode_step_ms_by_rows"]``): as the rows grow,
DynamicCache's per-step concatenation copies the whole cache, the slot buffers write one column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from knowlm_ray.generation.continuous import ContinuousBatcher
from knowlm_ray.generation.engine import GenerationEngine
from knowlm_ray.generation.params import GenerationParams
eng = GenerationEngine(sys.argv[2], device="cpu")
ids = eng.tokenizer("浙江大学位于杭州。" * 200)["input_ids"][: int(sys.argv[5])]
row = eng.prepare_ids(ids, GenerationParams(temperature=0, max_tokens=int(sys.argv[4])))
b = ContinuousBatcher(eng, max_batch_size=int(sys.argv[3]))
b.submit([row] * int(sys.argv[3])).result()
print(json.dumps(b.stats()["decode_step_ms_by_rows"][int(sys.argv[3])]))
b.close()
"""


def tiny_model(out: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    if not (out / "config.json").exists():
        corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
        build_tiny(out, corpus, TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172))
    return out


def step_ms(repo: Path, model: Path, rows: int, tokens: int, prompt: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(repo), str(model), str(rows), str(tokens), str(prompt)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="another checkout of the repository (the baseline)")
    ap.add_argument("--model-dir", default="/tmp/knowlm-kv-bench/model")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=400, help="prompt length (as /extract's ~400)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per row (as the fair-admission job's)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    model = tiny_model(Path(a.model_dir))
    runs: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(a.repeat):  # alternating, so drifting load hits both
        runs["baseline"].append(step_ms(Path(a.other), model, a.rows, a.tokens, a.prompt_tokens))
        runs["this"].append(step_ms(REPO, model, a.rows, a.tokens, a.prompt_tokens))
    base, this = statistics.median(runs["baseline"]), statistics.median(runs["this"])
    print(json.dumps({"rows": a.rows, "prompt_tokens": a.prompt_tokens, "tokens": a.tokens, "runs": runs}))
    print(f"decode step at {a.rows} rows (median of {a.repeat}): baseline {base:.2f} ms, this {this:.2f} ms, "
          f"{base / this:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
