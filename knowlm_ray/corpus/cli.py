"""`knowlm corpus inspect DIR [--samples N] [--tokenizer DIR] [--json]` and
`knowlm corpus export-megatron DIR OUT_PREFIX [--vocab-size N] [--tokenizer DIR]`
(registered by knowlm_ray.cli; the logic is in corpus/inspect.py and corpus/megatron.py)."""

from __future__ import annotations

import argparse
import json

# User errors (ShardError, MissingPathError, InputError) end in knowlm_ray.errors.user_errors.


def _inspect(a: argparse.Namespace) -> None:
    from knowlm_ray.corpus.inspect import render, summary

    if a.json:
        print(json.dumps(summary(a.dir), ensure_ascii=False, indent=2))
    else:
        print(render(a.dir, samples=a.samples, tokenizer=a.tokenizer, max_chars=a.max_chars))


def _export_megatron(a: argparse.Namespace) -> None:
    from knowlm_ray.corpus.inspect import resolve_tokenizer
    from knowlm_ray.corpus.megatron import export_megatron

    vocab = a.vocab_size
    if vocab is None:
        tok, _ = resolve_tokenizer(a.dir, a.tokenizer)
        vocab = len(tok) if tok is not None else None  # None: largest token id + 1
    info = export_megatron(a.dir, a.out_prefix, vocab_size=vocab)
    print(
        f"wrote {info['bin']} and {info['idx']}: {info['sequences']:,} sequences, {info['documents']:,} "
        f"documents, {info['tokens']:,} tokens as {info['dtype']} (vocab {info['vocab_size']:,})"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to `knowlm`."""
    group = sub.add_parser("corpus", help="inspect or export a prepared corpus (prepare-corpus output)")
    cmds = group.add_subparsers(dest="corpus_cmd", required=True)

    p = cmds.add_parser("inspect", help="manifest statistics and the first samples, decoded")
    p.add_argument("dir", metavar="DIR", help="a prepare_corpus out_dir")
    p.add_argument("--samples", type=int, default=3, metavar="N", help="rows to decode (default 3)")
    p.add_argument("--tokenizer", help="HF tokenizer dir (default: the one in the manifest's config)")
    p.add_argument("--max-chars", type=int, default=400, help="characters shown per decoded row")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON instead")
    p.set_defaults(fn=_inspect)

    p = cmds.add_parser("export-megatron", help="write Megatron-LM's indexed dataset (OUT_PREFIX.bin/.idx)")
    p.add_argument("dir", metavar="DIR", help="a prepare_corpus out_dir")
    p.add_argument("out_prefix", metavar="OUT_PREFIX", help="writes OUT_PREFIX.bin and OUT_PREFIX.idx")
    p.add_argument(
        "--vocab-size",
        type=int,
        help="picks uint16 (< 65500) or int32 tokens "
        "(default: the manifest's tokenizer, else the largest token id + 1)",
    )
    p.add_argument("--tokenizer", help="HF tokenizer dir whose size picks the dtype")
    p.set_defaults(fn=_export_megatron)
