"""Peak RSS and wall time of the weights toolkit against KnowLM's approach, side by side.

    .venv/bin/python benchmarks/weights_memory.py [--hidden 1024 --layers 8 --vocab 32000 --shards 5]
        [--workdir /tmp/knowlm-weights-bench] [--out benchmarks/results/weights.md]

Builds a random fp32 LLaMA of several hundred MB saved in several safetensors shards, a
fine-tuned copy (each weight scaled by 1 +- 1 %), its diff, and a LoRA adapter on every
projection (KnowLM's r=16 / alpha=32 / q,k,v,o,gate,up,down). Then runs, each in a fresh child
process so the numbers are that operation's alone:
* recover, ours: ``knowlm_ray.models.weight_diff.recover`` (streamed tensor by tensor);
* recover, KnowLM: ``tools/weight_diff.py recover`` as written there: both models loaded whole in
  fp32, ``tuned[k] += raw[k]`` for every tensor, the sum check, ``save_pretrained``;
* merge-lora, ours: ``knowlm_ray.models.lora.merge_lora`` (streamed);
* merge-lora, KnowLM / peft: load the base whole, ``PeftModel.from_pretrained`` +
  ``merge_and_unload`` + ``save_pretrained`` (``export_hf_checkpoint.py``; fp32 here, like ours);
* diff and export-gguf (f16), ours, for reference.
Peak RSS is the child's ``VmHWM`` (/proc/self/status), growth is over the RSS right after its
imports. Results (markdown table + the command) go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def _status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


# ---------------------------------------------------------------------------- the measured operations


def op_recover_ours(w: Path) -> None:
    from knowlm_ray.models.weight_diff import recover

    recover(w / "raw", w / "diff", w / "out_recover_ours")


def op_recover_knowlm(w: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    # zjunlp/KnowLM tools/weight_diff.py recover(), minus the tokenizer (none here)
    model_raw = AutoModelForCausalLM.from_pretrained(w / "raw", dtype=torch.float32, low_cpu_mem_usage=True)
    model_recovered = AutoModelForCausalLM.from_pretrained(w / "diff", dtype=torch.float32, low_cpu_mem_usage=True)
    state_dict_recovered = model_recovered.state_dict()
    state_dict_raw = model_raw.state_dict()
    for key in state_dict_recovered:
        state_dict_recovered[key].add_(state_dict_raw[key])
    allsum = sum(state_dict_recovered[key].sum() for key in state_dict_recovered)
    print(f"KnowLM-style naive sum: {float(allsum):.4f}", file=sys.stderr)
    model_recovered.save_pretrained(w / "out_recover_knowlm")


def op_merge_ours(w: Path) -> None:
    from knowlm_ray.models.lora import merge_lora

    merge_lora(w / "raw", w / "adapter", w / "out_merge_ours", dtype="float32")


def op_merge_peft(w: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(w / "raw", dtype=torch.float32, low_cpu_mem_usage=True)
    merged = PeftModel.from_pretrained(base, w / "adapter").merge_and_unload()
    merged.save_pretrained(w / "out_merge_peft", max_shard_size="1GB")


def op_merge2_ours(w: Path) -> None:
    from knowlm_ray.models.lora import merge_lora

    merge_lora(w / "raw", [w / "adapter", w / "adapter"], w / "out_merge2_ours", dtype="float32")


def op_merge2_peft(w: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(w / "raw", dtype=torch.float32, low_cpu_mem_usage=True)
    for _ in range(2):  # one adapter after the other, as peft users chain them
        merged = PeftModel.from_pretrained(merged, w / "adapter").merge_and_unload()
    merged.save_pretrained(w / "out_merge2_peft", max_shard_size="1GB")


def op_diff_ours(w: Path) -> None:
    from knowlm_ray.models.weight_diff import make_diff

    make_diff(w / "raw", w / "tuned", w / "out_diff_ours")


def op_gguf_ours(w: Path) -> None:
    from knowlm_ray.models.gguf_export import export_gguf

    export_gguf(w / "gguf_model", w / "out.gguf", "f16")


OPS = {
    "recover (ours, streamed)": ("recover", op_recover_ours, "from knowlm_ray.models.weight_diff import recover"),
    "recover (KnowLM: both models whole)": (
        "recover",
        op_recover_knowlm,
        "import torch, transformers; from transformers import AutoModelForCausalLM",
    ),
    "merge-lora (ours, streamed)": ("merge-lora", op_merge_ours, "from knowlm_ray.models.lora import merge_lora"),
    "merge-lora (KnowLM/peft: merge_and_unload)": (
        "merge-lora",
        op_merge_peft,
        "import torch, peft, transformers; from peft import PeftModel",
    ),
    "merge-lora, 2 adapters (ours, one streamed pass)": (
        "merge-lora x2",
        op_merge2_ours,
        "from knowlm_ray.models.lora import merge_lora",
    ),
    "merge-lora, 2 adapters (peft: merge_and_unload twice)": (
        "merge-lora x2",
        op_merge2_peft,
        "import torch, peft, transformers; from peft import PeftModel",
    ),
    "diff (ours, streamed)": ("diff", op_diff_ours, "from knowlm_ray.models.weight_diff import make_diff"),
    "export-gguf f16 (ours, streamed)": (
        "export-gguf",
        op_gguf_ours,
        "from knowlm_ray.models.gguf_export import export_gguf; import gguf",
    ),
}


def child(label: str, workdir: str) -> None:
    """Run one operation; print its peak RSS (VmHWM), RSS after imports and wall time."""
    _, fn, imports = OPS[label]
    exec(imports, {})  # the operation's imports count as baseline, not as its memory
    import resource

    base = _status("VmRSS")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn(Path(workdir))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print("RESULT " + json.dumps({"peak": _status("VmHWM"), "baseline": base, "wall": wall, "cpu": cpu}))


# ---------------------------------------------------------------------------- setup


def build(w: Path, vocab: int, hidden: int, layers: int, heads: int, intermediate: int, shards: int) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from knowlm_ray.models.weight_diff import make_diff

    if w.exists():
        shutil.rmtree(w)
    w.mkdir(parents=True)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)

    def save(directory: Path, make):
        directory.mkdir()
        cfg.save_pretrained(directory)
        sizes = {k: 4 * torch.Size(s).numel() for k, s in shapes.items()}
        target = sum(sizes.values()) / shards
        groups: list[list[str]] = [[]]
        for k in shapes:
            if groups[-1] and sum(sizes[x] for x in groups[-1]) + sizes[k] > target * 1.05 and len(groups) < shards:
                groups.append([])
            groups[-1].append(k)
        wm = {}
        for i, names in enumerate(groups, 1):
            fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file({k: make(k) for k in names}, directory / fname, metadata={"format": "pt"})
            wm.update({k: fname for k in names})
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": sum(sizes.values())}, "weight_map": wm})
        )

    def raw_tensor(k):
        gk = torch.Generator().manual_seed(sum(map(ord, k)) * 7919 + len(k))
        if k.endswith("norm.weight"):
            return 1 + 0.1 * torch.randn(shapes[k], generator=gk)
        return 0.02 * torch.randn(shapes[k], generator=gk)

    save(w / "raw", raw_tensor)
    save(w / "tuned", lambda k: raw_tensor(k) * (1 + 0.01 * (2 * torch.rand(shapes[k], generator=g) - 1)))
    make_diff(w / "raw", w / "tuned", w / "diff")
    ad = w / "adapter"
    ad.mkdir()
    lora = {}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for k, s in shapes.items():
        if any(k.endswith(f"{t}.weight") for t in targets):
            mod = "base_model.model." + k[: -len(".weight")]
            lora[f"{mod}.lora_A.weight"] = 0.01 * torch.randn(16, s[1], generator=g)
            lora[f"{mod}.lora_B.weight"] = 0.01 * torch.randn(s[0], 16, generator=g)
    save_file(lora, ad / "adapter_model.safetensors", metadata={"format": "pt"})
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.05,
                "bias": "none",
                "target_modules": targets,
                "fan_in_fan_out": False,
                "base_model_name_or_path": None,
            }
        )
    )
    files = sorted((w / "raw").glob("*.safetensors"))
    return {
        "model_bytes": sum(f.stat().st_size for f in files),
        "largest_shard": max(f.stat().st_size for f in files),
        "shards": len(files),
        "params": sum(torch.Size(s).numel() for s in shapes.values()),
        "largest_tensor": max(4 * torch.Size(s).numel() for s in shapes.values()),
    }


def add_sentencepiece(w: Path, vocab: int) -> bool:
    """export-gguf reads tokenizer.model: train a throwaway one of exactly ``vocab`` pieces."""
    import sentencepiece as spm

    try:
        import io

        lines = [f"token{i} word{i % 977} 词{i % 331} {i}" for i in range(3000)]
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab,
            byte_fallback=True,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
        )
        sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
        if sp.vocab_size() > vocab:
            return False
        g = w / "gguf_model"  # the raw model's files + this vocabulary (kept out of raw/: merge-lora would
        g.mkdir()  # rightly refuse a tokenizer smaller than the embeddings)
        for f in (w / "raw").iterdir():
            os.symlink(f, g / f.name)
        (g / "tokenizer.model").write_bytes(buf.getvalue())
        return True
    except Exception:  # noqa: BLE001
        return False


def run_child(label: str, w: Path) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, __file__, "--child", label, "--workdir", str(w)], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[7:])
    out["process_wall"] = time.perf_counter() - t0
    return out


def same_weights(a: Path, b: Path) -> bool:
    import torch

    from knowlm_ray.models.checkpoint import Checkpoint

    with Checkpoint(a) as A, Checkpoint(b) as B:
        if set(A.names()) != set(B.names()):
            return False
        return all(torch.allclose(A.read(n), B.read(n), rtol=1e-5, atol=1e-6) for n in A.names())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/knowlm-weights-bench")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "weights.md"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per operation (interleaved)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.workdir)
        return

    w = Path(a.workdir)
    t0 = time.perf_counter()
    info = build(w, a.vocab, a.hidden, a.layers, a.heads, a.intermediate, a.shards)
    have_sp = add_sentencepiece(w, a.vocab)
    os.sync()  # no run should pay for flushing the set-up's dirty pages
    print(f"built in {time.perf_counter() - t0:.1f}s: {info}", file=sys.stderr)
    runs: dict[str, list[dict]] = {label: [] for label in OPS if "gguf" not in label or have_sp}
    for rep in range(a.repeat):  # interleaved, so a burst of load on a shared box hits every operation alike
        for label in runs:
            r = run_child(label, w)
            runs[label].append(r)
            print(
                f"[{rep + 1}/{a.repeat}] {label:45s} peak {r['peak'] / MB:8.1f} MB  growth "
                f"{(r['peak'] - r['baseline']) / MB:8.1f} MB  wall {r['wall']:6.2f}s  cpu {r['cpu']:6.2f}s",
                file=sys.stderr,
            )
    rows = []
    for label, rs in runs.items():
        med = lambda key, rs=rs: sorted(x[key] for x in rs)[len(rs) // 2]  # noqa: E731
        rows.append(
            (
                label,
                {
                    "peak": max(x["peak"] for x in rs),
                    "baseline": min(x["baseline"] for x in rs),
                    "wall": med("wall"),
                    "wall_min": min(x["wall"] for x in rs),
                    "cpu": med("cpu"),
                },
            )
        )
    checks = {
        "recover: ours == KnowLM's": same_weights(w / "out_recover_ours", w / "out_recover_knowlm"),
        "recover: ours == the tuned model": same_weights(w / "out_recover_ours", w / "tuned"),
        "merge-lora: ours == peft merge_and_unload": same_weights(w / "out_merge_ours", w / "out_merge_peft"),
        "merge-lora, 2 adapters: ours == peft twice": same_weights(w / "out_merge2_ours", w / "out_merge2_peft"),
    }
    largest = info["largest_shard"]
    cmd = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/weights_memory.py " + " ".join(
        f"--{k} {v}"
        for k, v in (
            ("vocab", a.vocab),
            ("hidden", a.hidden),
            ("layers", a.layers),
            ("heads", a.heads),
            ("intermediate", a.intermediate),
            ("shards", a.shards),
            ("repeat", a.repeat),
        )
    )
    import torch
    import transformers

    lines = [
        "# Weights toolkit: peak memory and time (`benchmarks/weights_memory.py`)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"Model: random fp32 LLaMA, {info['params'] / 1e6:.0f} M parameters = {info['model_bytes'] / MB:.0f} MB in "
        f"{info['shards']} safetensors shards (largest shard {largest / MB:.0f} MB, largest tensor "
        f"{info['largest_tensor'] / MB:.0f} MB). LoRA: r=16, alpha=32 on q,k,v,o,gate,up,down (KnowLM's).",
        "",
        "Peak RSS = the child process's VmHWM; growth = peak minus the RSS right after the operation's imports.",
        "Goal: peak RSS growth <= 2x the largest shard.",
        "",
        f"Each operation ran {a.repeat} times, interleaved; peak = the highest of the runs; wall (median and "
        "fastest) and CPU time (user + system, median) of the operation itself. The 2-core box is shared with "
        "other jobs, so wall times are noisy; CPU time is the steadier comparison.",
        "",
        "| operation | peak RSS (MB) | growth (MB) | growth / largest shard | wall median / min (s) | CPU (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        g = r["peak"] - r["baseline"]
        lines.append(
            f"| {label} | {r['peak'] / MB:.0f} | {g / MB:.0f} | {g / largest:.2f}x | "
            f"{r['wall']:.1f} / {r['wall_min']:.1f} | {r['cpu']:.1f} |"
        )
    lines += [
        "",
        "Output checks: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()) + ".",
        "",
        "Notes:",
        "- Ours also does work KnowLM's does not: re-hashes the diff against its `checksums.sha256`, checks every "
        "raw and recovered tensor against the diff's fingerprints, and writes a sha256 manifest of the output.",
        "- Peak growth is about one largest tensor (the 125 MB embedding) plus ~1 MB chunks: reading one operand "
        "whole and streaming the other in chunks. For LLaMA-13B (26 GB fp16 / 52 GB fp32, largest tensor "
        "32000x5120) that is ~0.3-0.7 GB instead of two whole models.",
        "- The toolkit runs torch single-threaded inside its loops: with OpenMP's 2 threads on this loaded box the "
        "same recover took 22-46 s of CPU (thousands of small ops, each paying a thread hand-off); with 1 "
        "thread 3 s.",
        "- glibc returns freed blocks above its mmap threshold (<= 32 MB) to the OS; with tensors smaller than "
        "that (tiny models) freed memory can stay in the heap, so small models show up to ~2 tensors of growth.",
        "- GGUF in llama.cpp (not part of this script; llama-cpp-python 0.3.36 built from PyPI's sdist in a scratch venv): `KNOWLM_LLAMA_CPP_PYTHON=/tmp/llcpp/venv/bin/python .venv/bin/pytest tests/models/test_gguf.py` -> 9 passed: 12 greedy tokens identical to transformers for the f32 and f16 exports of the tiny model (max logit difference 2.1e-4 / 5.1e-4, llama.cpp's f16 KV cache), and the exported LoRA adapter loaded with `lora_path` gives the merged model's tokens. Our f32 and q8_0 files are tensor-for-tensor byte-identical to llama.cpp's own convert_hf_to_gguf.py output (metadata identical except general.name).",
        "",
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    if not a.keep:
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
