"""`knowlm` command: one thin subcommand per library entry point.

knowlm init-tiny --out artifacts/tiny
knowlm prepare-corpus --config jobs/configs/tiny_corpus.yaml [key=value ...]
knowlm pretrain --config jobs/configs/tiny.yaml [key=value ...]
knowlm prepare-instructions --config jobs/configs/tiny_instructions.yaml [key=value ...]
knowlm finetune-lora --config jobs/configs/tiny_lora.yaml [key=value ...]
knowlm batch-extract --config jobs/configs/tiny_extract.yaml [key=value ...]
knowlm evaluate --config jobs/configs/tiny_eval.yaml [key=value ...]
knowlm generate-instructions --config jobs/configs/tiny_generate.yaml [key=value ...]
knowlm curate-instructions --config jobs/configs/tiny_curate.yaml [key=value ...]
knowlm edit-stats --config jobs/configs/tiny_edit_stats.yaml [key=value ...]
knowlm config show JOB          (a job's config keys as commented YAML; JOB: a job above or serve)
knowlm kg2instruct --records R --schema S --out O [--seed N]
knowlm plot RUN_DIR [--out PNG]
knowlm corpus inspect DIR [--samples N]
knowlm corpus export-megatron DIR OUT_PREFIX
knowlm weights merge-lora --base B --lora L1 [--lora L2 ...] --out M
knowlm ie-score --task ner|re|ee --gold G.jsonl --pred P.jsonl
knowlm edit apply --model M --requests R.jsonl --method rome|memit|ft --out DIR   (also: edit eval|revert|fact-model)
knowlm extract --task ner --schema 人物 地理位置 --lang zh --text "..." (--model DIR | --server URL)
knowlm serve (--model DIR | --config serve_configs/tiny.yaml) [--lora NAME=DIR ...] [--edit DIR ...] [--prompt-format F] [--host H] [--port P] [--set KEY=VALUE ...] [--ingress haproxy]
knowlm chat (--server URL | --model-dir DIR)
knowlm web --server URL
knowlm demo
"""

from __future__ import annotations

import argparse
import importlib
import sys

from knowlm_ray.entry import add_job_commands, user_errors
from knowlm_ray.errors import InputError
from knowlm_ray.runtime import set_default_env

COMMAND_MODULES = (
    "knowlm_ray.models.weights_cli",
    "knowlm_ray.ie.cli",
    "knowlm_ray.corpus.cli",
    "knowlm_ray.train.cli",
    "knowlm_ray.clients.cli",
    "knowlm_ray.edit.cli",
)


def _init_tiny(a: argparse.Namespace) -> None:
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    spec = TinySpec(
        vocab_size=a.vocab_size,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        intermediate=a.intermediate or int(a.hidden * 8 / 3 + 0.5),
        seed=a.seed,
    )
    out = build_tiny(a.out, a.corpus or DEFAULT_CORPUS, spec)
    print(f"tiny model written to {out}")


def _serve(a: argparse.Namespace) -> None:
    from knowlm_ray.serve.launch import serve_blocking

    serve_blocking(**serve_kwargs(a))


def serve_kwargs(a: argparse.Namespace) -> dict:
    """``serve_blocking``'s arguments from ``knowlm serve``'s: the ``--config`` file's, each
    overridden by a flag (``--lora`` per adapter name, ``--edit`` as a whole list)."""
    app_args: dict = {}
    host = port = proxy_location = None
    if a.config:  # the file first: every flag below overrides it
        from knowlm_ray.serve.config_file import read_serve_config

        file = read_serve_config(a.config)
        app_args, host, port, proxy_location = dict(file.args), file.host, file.port, file.proxy_location
    file_model = app_args.pop("model", None)
    model = a.model or file_model
    if not model:
        raise InputError("knowlm serve needs --model DIR, or --config FILE whose args name the model")
    loras = {**(app_args.pop("loras", None) or {}), **dict(_name_eq_dir(x) for x in a.lora)}
    app_args.update(_app_arg(x) for x in a.set)
    if a.prompt_format is not None:
        app_args["prompt_format"] = a.prompt_format
    if a.edit:
        app_args["edits"] = a.edit  # in place of the file's: the order is the flags'
    return dict(
        model=model,
        loras=loras,
        host=a.host or host or "127.0.0.1",
        port=a.port if a.port is not None else (port or 8000),
        ingress=a.ingress,
        proxy_location=proxy_location,
        **app_args,
    )


def _app_arg(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE`` for the app's options: the value is read as YAML (numbers, booleans),
    and the app's own config model checks both."""
    import yaml

    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise InputError(f"--set expects KEY=VALUE (e.g. max_batch_size=32), got {text!r}")
    if key in ("model", "loras", "host", "port", "ingress"):
        flag = "--lora" if key == "loras" else f"--{key}"
        raise InputError(f"--set {key}=...: use {flag} for that")
    return key, yaml.safe_load(value)


def _name_eq_dir(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise InputError(f"--lora expects NAME=DIR, got {text!r}")
    name, path = text.split("=", 1)
    return name, path


def _demo(a: argparse.Namespace) -> None:
    from knowlm_ray.demo import run_demo

    run_demo(workdir=a.workdir, steps=a.steps)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="knowlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("init-tiny", help="build the embedded default tiny LLaMA + tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--corpus", nargs="*", help="files/dirs to train the tokenizer on (default data/sample)")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_init_tiny)

    # Every job (jobs/*.py) and `knowlm config show JOB`: knowlm_ray/entry.py.
    add_job_commands(sub)

    # Listed for --help; main() hands its arguments to the module's own parser.
    sub.add_parser(
        "kg2instruct", add_help=False, help="IE records + schema -> alpaca instructions (--help for options)"
    )

    # Command groups that live beside their library code.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)

    from knowlm_ray.config import keys_help
    from knowlm_ray.serve.options import AppArgs

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP with Ray Serve (blocks)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=keys_help(
            AppArgs, "serve", title="app options (--set KEY=VALUE; in a serve config file: applications[].args):"
        ),
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a Serve config file (serve_configs/*.yaml, as `serve run` takes it), run on the private "
        "Ray this starts: its http_options host/port, the app's args and its deployment's options; "
        "the flags below override it",
    )
    p.add_argument("--model", help="HF model directory (required without --config)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=DIR", help="a peft adapter to serve")
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="DIR",
        help="a knowledge edit (knowlm edit apply's output) applied when a replica loads; repeat: in order",
    )
    p.add_argument(
        "--prompt-format",
        default=None,
        metavar="F",
        help="how /extract asks the model: alpaca (default), oneke, zhixi or chat (the prompt_format app option)",
    )
    p.add_argument("--host", default=None, help="HTTP host (default: the --config file's, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the --config file's, else 8000)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an app option (listed below), e.g. --set num_replicas=2",
    )
    p.add_argument(
        "--ingress",
        choices=["proxy", "haproxy"],
        default=None,
        help="HTTP front of the Ray this starts: Ray's Python proxy (default) or HAProxy, which "
        "costs ~10x less CPU per request (BENCHMARKS.md); on a running cluster it is set "
        "at `ray start` (RAY_SERVE_ENABLE_HA_PROXY=1)",
    )
    p.set_defaults(fn=_serve)

    p = sub.add_parser("demo", help="the whole chain on the embedded default")
    p.add_argument("--workdir", default="artifacts/demo")
    p.add_argument("--steps", type=int, default=200, help="pretraining steps")
    p.set_defaults(fn=_demo)
    return ap


def main(argv: list[str] | None = None) -> None:
    set_default_env()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kg2instruct"]:
        from knowlm_ray.instruct.kg2instruct import main as kg2instruct

        with user_errors():
            raise SystemExit(kg2instruct(argv[1:]))
    args = build_parser().parse_args(argv)
    with user_errors():  # the one boundary: a user error is one line and exit 2, a bug a traceback
        args.fn(args)


if __name__ == "__main__":
    main()
