"""`knowlm weights ...` subcommands (registered by knowlm_ray.cli). Imports stay lazy: --help is instant."""
from __future__ import annotations

import argparse


def _merge_lora(a: argparse.Namespace) -> None:
    from knowlm_ray.models.lora import merge_lora

    out = merge_lora(a.base, a.lora, a.out, dtype=a.dtype)
    print(f"merged model written to {out}")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("weights", help="weight tools").add_subparsers(dest="wcmd", required=True)
    p = w.add_parser("merge-lora", help="fold a LoRA adapter into its base model")
    p.add_argument("--base", required=True)
    p.add_argument("--lora", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(fn=_merge_lora)
