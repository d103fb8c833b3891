"""Helpers for the weights-toolkit tests: small random LLaMA checkpoints in any layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")


def llama_config(
    vocab: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int | None = None, intermediate: int = 172
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )


def random_state_dict(cfg, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The state dict a LlamaForCausalLM of ``cfg`` has, filled with N(0, 0.02) (norms ~1)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        names = {k: (tuple(v.shape)) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in names.items():
        if k.endswith("norm.weight"):
            sd[k] = (1 + 0.1 * torch.randn(shape, generator=g)).to(dtype)
        else:
            sd[k] = (0.02 * torch.randn(shape, generator=g)).to(dtype)
    return sd


def save_checkpoint(
    directory: Path,
    sd: dict[str, torch.Tensor],
    cfg=None,
    shards: int = 1,
    fmt: str = "safetensors",
    tokenizer_from: Path | None = None,
) -> Path:
    """Write ``sd`` as an HF directory in ``shards`` files (safetensors or legacy torch .bin) + index."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    size = {k: v.numel() * v.element_size() for k, v in sd.items()}
    target = sum(size.values()) / shards
    groups: list[list[str]] = [[]]
    for k in sd:  # greedy by bytes, like save_pretrained's max_shard_size
        if groups[-1] and sum(size[x] for x in groups[-1]) + size[k] > target * 1.05 and len(groups) < shards:
            groups.append([])
        groups[-1].append(k)
    n = len(groups)
    prefix, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, g in enumerate(groups, 1):
        fname = f"{prefix}.{ext}" if n == 1 else f"{prefix}-{i:05d}-of-{n:05d}.{ext}"
        part = {k: sd[k].contiguous() for k in g}
        if fmt == "safetensors":
            save_file(part, directory / fname, metadata={"format": "pt"})
        else:
            torch.save(part, directory / fname)
        weight_map.update({k: fname for k in g})
    if n > 1:
        (directory / f"{prefix}.{ext}.index.json").write_text(
            json.dumps(
                {
                    "metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                    "weight_map": weight_map,
                }
            )
        )
    if cfg is not None:
        cfg.save_pretrained(directory)
    if tokenizer_from is not None:
        for f in TOK_FILES:
            if (tokenizer_from / f).is_file():
                shutil.copy2(tokenizer_from / f, directory / f)
    return directory


def read_all(directory: Path) -> dict[str, torch.Tensor]:
    """Reference reader (safetensors' own safe_open / torch.load), independent of the toolkit."""
    from safetensors import safe_open

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    for f in sorted(directory.glob("*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


@pytest.fixture(scope="module")
def small_cfg(tiny_model):
    from transformers import AutoTokenizer

    return llama_config(len(AutoTokenizer.from_pretrained(tiny_model)))


# VmHWM (this process's peak RSS) rather than getrusage's ru_maxrss: Linux carries ru_maxrss over
# fork + exec, so a child of a big pytest process would report the parent's peak.
PROBE = r"""
import json, re
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
import torch
{imports}
base = status("VmRSS")
{work}
print("PROBE " + json.dumps({{"baseline": base, "peak": status("VmHWM")}}))
"""


def peak_rss(imports: str, work: str, cwd=None) -> dict:
    """Run ``work`` in a fresh interpreter; RSS after ``imports`` and the process's peak RSS (bytes)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports, work=work)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")][-1]
    out = json.loads(line[6:])
    out["growth"] = out["peak"] - out["baseline"]
    return out
