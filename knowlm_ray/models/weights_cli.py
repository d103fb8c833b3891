"""`knowlm weights ...` subcommands (registered by knowlm_ray.cli). Imports stay lazy: --help is instant.

knowlm weights download --repo ID --out DIR [--revision R] [--include PATTERN ...] [--token T] [--allow-unverified]
knowlm weights diff --raw R --tuned T --out D [--dtype float16]
knowlm weights recover --raw R --diff D --out T [--expect-sum X] [--sum-tol E]
knowlm weights merge-lora --base B --lora L [--lora L2 ...] --out M [--dtype float16]
knowlm weights merge-edit --base M --edit DIR [--edit DIR2 ...] --out OUT [--dtype auto]
knowlm weights verify DIR [--write-manifest] [--load]
knowlm weights export-gguf --model M --out F.gguf [--outtype f16|q8_0|f32]
"""

from __future__ import annotations

import argparse
import json

from knowlm_ray.errors import InputError

DTYPES = ["float32", "float16", "bfloat16"]


def _report(summary: dict, line: str) -> None:
    print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    print(line)


def _merge_lora(a: argparse.Namespace) -> None:
    from knowlm_ray.models.lora import merge_lora

    out = merge_lora(a.base, a.lora, a.out, dtype=a.dtype)
    print(f"merged model ({len(a.lora)} adapter{'s' if len(a.lora) > 1 else ''}) written to {out}")


def _merge_edit(a: argparse.Namespace) -> None:
    from knowlm_ray.models.edit_delta import merge_edit

    out = merge_edit(a.base, a.edit, a.out, dtype=a.dtype)
    print(f"model with {len(a.edit)} edit{'s' if len(a.edit) > 1 else ''} applied written to {out}")


def _diff(a: argparse.Namespace) -> None:
    from knowlm_ray.models.weight_diff import make_diff

    s = make_diff(a.raw, a.tuned, a.out, dtype=a.dtype)
    _report(
        s,
        f"diff of {s['tensors']} tensors written to {s['out']} (tuned = raw + diff; "
        f"tuned sum {s['tuned_sum']:.4f}, {s['inexact_elements']} inexact elements)",
    )


def _recover(a: argparse.Namespace) -> None:
    from knowlm_ray.models.weight_diff import recover

    s = recover(
        a.raw,
        a.diff,
        a.out,
        expect_sum=a.expect_sum,
        sum_tol=a.sum_tol,
        dtype=a.dtype,
        verify_checksums=not a.no_checksums,
    )
    _report(s, f"recovered {s['tensors']} tensors into {s['out']} (sum {s['sum']:.4f}; {'; '.join(s['notes'])})")


def _verify(a: argparse.Namespace) -> None:
    from knowlm_ray.models.verify import print_report, verify

    report = verify(
        a.dir,
        write=a.write_manifest,
        load=a.load,
        scan=a.scan,
        checksums=not a.no_checksums,
        allow_padded_vocab=a.allow_padded_vocab,
        trust_remote_code=a.trust_remote_code,
    )
    print_report(report)
    if report["problems"]:
        raise SystemExit(1)


def _download(a: argparse.Namespace) -> None:
    from knowlm_ray.models.download import download

    s = download(
        a.repo,
        a.out,
        revision=a.revision,
        include=a.include,
        token=a.token,
        endpoint=a.endpoint,
        offline=a.offline,
        repo_type=a.repo_type,
        max_workers=a.max_workers,
        allow_unverified=a.allow_unverified,
    )
    v = s.get("verified", {})
    _report(
        s,
        f"{s['repo']}@{s.get('commit') or s['revision']}: {s.get('files', '?')} files in {s['path']} "
        f"({v.get('sha256', 0)} sha256-verified, {v.get('git_sha1', 0)} git-verified, "
        f"{v.get('unverified', 0)} unverified)",
    )


def _expand_vocab(a: argparse.Namespace) -> None:
    import json

    from knowlm_ray.models.vocab import expand_vocab

    summary = expand_vocab(a.base, a.sp_model or a.corpus, a.out, vocab_size=a.vocab_size)
    print(json.dumps(summary, indent=2))


def _export_gguf(a: argparse.Namespace) -> None:
    from pathlib import Path

    from knowlm_ray.models.gguf_export import export_gguf, export_lora_gguf

    if (Path(a.model) / "adapter_config.json").is_file():
        if not a.base:
            raise InputError("--model is a LoRA adapter: pass --base (the model it was trained on) too")
        s = export_lora_gguf(a.model, a.base, a.out, outtype=a.outtype if a.outtype != "q8_0" else "f16")
        _report(
            s,
            f"llama.cpp adapter GGUF written to {s['out']} ({s['tensors']} tensors; load it with --lora "
            "next to the base model's GGUF)",
        )
        return
    s = export_gguf(a.model, a.out, outtype=a.outtype, name=a.name)
    _report(s, f"GGUF ({s['outtype']}, {s['tensors']} tensors, {s['bytes'] / 2**20:.1f} MiB) written to {s['out']}")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "weights",
        help="weight tools: download, diff/recover, merge-lora, verify, export-gguf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="wcmd", required=True)

    p = w.add_parser("merge-lora", help="fold LoRA adapter(s) into their base model (streamed, shard by shard)")
    p.add_argument("--base", required=True)
    p.add_argument(
        "--lora",
        required=True,
        action="append",
        metavar="DIR",
        help="peft adapter; repeat to fold several in this order, each onto the result of the ones before",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dtype", default="float32", choices=DTYPES + ["auto"], help="output dtype (auto: keep the base model's)"
    )
    p.set_defaults(fn=_merge_lora)

    p = w.add_parser(
        "merge-edit", help="apply knowledge edit(s) (knowlm edit apply's output) to a model folder, streamed"
    )
    p.add_argument("--base", required=True, help="the model the (first) edit was made on")
    p.add_argument(
        "--edit",
        required=True,
        action="append",
        metavar="DIR",
        help="edit directory; repeat to apply several in this order, each onto the result of the ones before",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="auto", choices=DTYPES + ["auto"], help="output dtype (auto: the base's)")
    p.set_defaults(fn=_merge_edit)

    p = w.add_parser("diff", help="publish a fine-tuned model as tuned - raw (KnowLM's weight-diff convention)")
    p.add_argument("--raw", required=True, help="base model directory")
    p.add_argument("--tuned", required=True, help="fine-tuned model directory")
    p.add_argument("--out", required=True, help="diff directory to write")
    p.add_argument("--dtype", choices=DTYPES, help="dtype of the diff tensors (default: the tuned model's)")
    p.set_defaults(fn=_diff)

    p = w.add_parser("recover", help="tuned = raw + diff, tensor by tensor, with integrity checks")
    p.add_argument("--raw", required=True, help="base model directory (e.g. LLaMA-13B in HF format)")
    p.add_argument("--diff", required=True, help="diff directory (ours, or KnowLM's published one)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--expect-sum",
        type=float,
        help="KnowLM's naive integrity check: sum of all weights (94052.2891 for ZhiXi-13B fp32)",
    )
    p.add_argument("--sum-tol", type=float, help="absolute tolerance of --expect-sum (default 1e-2 + 2e-6*|X|)")
    p.add_argument("--dtype", choices=DTYPES, help="output dtype (default: the tuned model's)")
    p.add_argument("--no-checksums", action="store_true", help="skip re-hashing the diff against checksums.sha256")
    p.set_defaults(fn=_recover)

    p = w.add_parser("verify", help="check a model dir: loads, vocab sizes agree, checksums; prints size/params")
    p.add_argument("dir")
    p.add_argument("--write-manifest", action="store_true", help="write checksums.sha256 into the directory")
    p.add_argument("--load", action="store_true", help="also load the real weights and run one forward pass")
    p.add_argument("--scan", action="store_true", help="also read every tensor: NaN/Inf or all-zero tensors")
    p.add_argument("--no-checksums", action="store_true", help="skip hashing the files (faster on big models)")
    p.add_argument(
        "--allow-padded-vocab",
        action="store_true",
        help="no effect, kept for old scripts: more embedding rows than tokens (a padded vocabulary) is "
        "accepted by default; only tokens without rows are a problem",
    )
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(fn=_verify)

    p = w.add_parser("download", help="fetch a hub repo (resumes partial files) and verify sizes/sha256")
    p.add_argument("--repo", required=True, help="e.g. zjunlp/knowlm-13b-zhixi")
    p.add_argument("--out", required=True, help="directory to download into")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--include", nargs="+", metavar="PATTERN", help="only files matching these globs")
    p.add_argument("--token", default=None, help="hub token for gated/private repos (default: the saved login)")
    p.add_argument("--endpoint", help="hub endpoint, e.g. a mirror (default $HF_ENDPOINT or huggingface.co)")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset"])
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--offline", action="store_true", help="no network: use and verify what is already there")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept files the hub published no size or hash for (default: such files fail the command)",
    )
    p.set_defaults(fn=_download)

    p = w.add_parser("export-gguf", help="LLaMA HF dir (or LoRA adapter) -> GGUF for llama.cpp (needs the gguf extra)")
    p.add_argument("--model", required=True, help="HF model directory, or a peft LoRA adapter directory")
    p.add_argument("--out", required=True, help="output .gguf file")
    p.add_argument("--outtype", default="f16", choices=["f16", "q8_0", "f32"])
    p.add_argument("--base", help="for a LoRA adapter: the base model directory (for its shapes and heads)")
    p.add_argument("--name", help="general.name in the file (default: the directory name)")
    p.set_defaults(fn=_export_gguf)

    p = w.add_parser(
        "expand-vocab",
        help="merge a second sentencepiece vocabulary into a model "
        "(Chinese-LLaMA-Alpaca style) and resize its embeddings",
    )
    p.add_argument("--base", required=True, help="HF model directory with tokenizer.model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sp-model", help="a sentencepiece .model whose pieces are added")
    src.add_argument("--corpus", nargs="+", help="text files/dirs to train the extra vocabulary on")
    p.add_argument("--vocab-size", type=int, default=20000, help="size of the vocabulary trained on --corpus")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=_expand_vocab)
