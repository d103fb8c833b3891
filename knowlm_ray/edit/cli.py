"""`knowlm edit ...` subcommands (registered by knowlm_ray.cli). Imports stay lazy: --help is instant.

knowlm edit apply --model M --requests R.jsonl --method rome|memit|ft [--config C.yaml] [--set KEY=VALUE ...]
                  [--stats-data DATA] --out DIR
knowlm edit eval --model M --requests R.jsonl [--edit DIR] [--ike] [--report FILE]
knowlm edit revert --model M --edit DIR --out OUT
knowlm edit fact-model --out DIR [--spec test|bench] [--people N] [--layers N]

`apply` writes the edit alone (edit.safetensors: low-rank factors per edited matrix; manifest.json:
method, settings, requests, the base's checksums), never a copy of the model; apply it with
`knowlm weights merge-edit`, `knowlm serve --edit DIR` or `edit eval --edit DIR`. Several ROME
requests are edited one after another and stored as one delta per matrix (their rank-one factors
side by side). The methods' settings (`--config` YAML keys, `--set` overrides) are listed by
`knowlm edit apply --help`.
"""

from __future__ import annotations

import argparse
import json

from knowlm_ray.errors import InputError


def _kv(text: str) -> tuple[str, object]:
    import yaml

    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise InputError(f"--set expects KEY=VALUE (e.g. layers=[2]), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _apply(a: argparse.Namespace) -> None:
    from knowlm_ray.edit.apply import apply_edits

    s = apply_edits(
        a.model,
        a.requests,
        a.method,
        a.out,
        config=a.config,
        overrides=dict(_kv(x) for x in a.set),
        stats_data=a.stats_data,
        device=a.device,
        dtype=a.dtype,
    )
    print(json.dumps(s, indent=1))
    print(
        f"{s['method']} edit of {s['requests']} request(s) written to {s['out']} ({s['edit_bytes']} bytes; "
        f"target log-prob {s['target_logprob_before']:.3f} -> {s['target_logprob_after']:.3f})"
    )


def _eval(a: argparse.Namespace) -> None:
    from knowlm_ray.edit.evaluation import evaluate_edit, table, write_report

    if a.edit is None and not a.ike:
        print("(no --edit or --ike: the unedited model only)")
    report = evaluate_edit(a.model, a.requests, edit_dir=a.edit, ike=a.ike, device=a.device, dtype=a.dtype)
    print(table(report))
    if a.report:
        print(f"report written to {write_report(report, a.report)}")


def _fact_model(a: argparse.Namespace) -> None:
    from dataclasses import replace

    from knowlm_ray.edit.facts import FACT_SPECS, build_fact_model

    spec = replace(FACT_SPECS[a.spec], people=a.people, seed=a.seed)
    build_fact_model(a.out, spec if a.layers is None else replace(spec, layers=a.layers))


def _settings_help() -> str:
    from knowlm_ray.config import keys_help
    from knowlm_ray.edit.settings import SETTINGS

    return "\n\n".join(
        keys_help(cls, None, title=f"{name} settings (--config YAML keys, --set KEY=VALUE):")
        for name, cls in SETTINGS.items()
    )


def register(sub: argparse._SubParsersAction) -> None:
    from knowlm_ray.edit import revert

    group = sub.add_parser(
        "edit",
        help="knowledge editing: apply / eval / revert an edit (ROME, MEMIT, FT-L), build the fact model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = group.add_subparsers(dest="edit_cmd", required=True)

    p = esub.add_parser(
        "apply",
        help="compute an edit and write it (the low-rank delta, not a model)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_settings_help(),
    )
    p.add_argument("--model", required=True, help="HF model directory to edit")
    p.add_argument(
        "--requests", required=True, help="edit requests: KnowEdit, ZsRE or {prompt, subject, target_new} jsonl"
    )
    p.add_argument("--method", required=True, choices=["rome", "memit", "ft"])
    p.add_argument("--config", default=None, help="YAML file of the method's settings (listed below)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, e.g. --set layers=[2]")
    p.add_argument(
        "--stats-data",
        default=None,
        help="where to measure the keys' second moment C when none is cached: corpus shards "
        "(jobs/edit_stats.py, cached) or a .txt / .jsonl file (here, not cached)",
    )
    p.add_argument("--out", required=True, help="edit directory to write")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(fn=_apply)

    p = esub.add_parser("eval", help="reliability, generalization, locality, portability before and after")
    p.add_argument("--model", required=True, help="the unedited HF model directory")
    p.add_argument("--requests", required=True, help="the requests (with rephrase / locality / portability)")
    p.add_argument("--edit", default=None, metavar="DIR", help="an edit directory computed on --model")
    p.add_argument("--ike", action="store_true", help="also score IKE: the new facts as in-context demonstrations")
    p.add_argument("--report", default=None, metavar="FILE", help="write the full report (per request) as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(fn=_eval)

    revert.register(esub)

    p = esub.add_parser(
        "fact-model", help="build the fact-trained fixture (a small LLaMA that recalls synthetic facts)"
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--spec",
        default="test",
        choices=["test", "bench"],
        help="test: 4 layers, 64 wide (seconds); bench: the benchmark's",
    )
    p.add_argument("--people", type=int, default=16)
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_fact_model)
