"""The one way into every job and every ``knowlm`` command, and the one user-error boundary.

    python jobs/pretrain.py --config F [key.path=value ...]   ->  run_job("pretrain", ...)
    knowlm pretrain --config F [key.path=value ...]           ->  the same JobSpec, the same run_job
    knowlm <any subcommand>                                   ->  inside user_errors()

``user_errors()``: a user error (``knowlm_ray.errors.UserError``: a bad config, a path that does
not exist, input that cannot be used) becomes one line on stderr, ``error: <message>``, and exit
status 2; anything else is a bug and keeps its traceback.

``JOBS`` names each job once: its ``knowlm`` subcommand, its script in ``jobs/``, its config class,
the library function that runs it, whether Ray starts before it, and how its result is reported.
``knowlm config show JOB`` prints a job's config as commented YAML (``config_template``).
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knowlm_ray.errors import user_errors


def _print_json(summary: Any, cfg: Any) -> None:
    if summary is not None:
        print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))


def _corpus_report(manifest: dict, cfg: Any) -> None:
    s = manifest["stages"]
    by_filter = ", ".join(f"{k} {v}" for k, v in manifest["filters"].items() if v)
    capped = f", {s['capped']} over mix caps" if s.get("capped") else ""
    print(
        f"prepare_corpus: {s['read']} read, {s['malformed']} malformed, {s['filtered']} filtered"
        f"{f' ({by_filter})' if by_filter else ''}, {s['exact_dups']} exact dups, {s['near_dups']} near dups"
        f"{capped} -> {s['documents']} documents, {s['samples']} samples, {s['tokens']} tokens in "
        f"{len(manifest['shards'])} shards at {cfg.out_dir}"
    )


def _instructions_report(manifest: dict, cfg: Any) -> None:
    s, d = manifest["splits"], manifest["dropped"]
    print(
        f"prepare_instructions: {manifest['read']} read, {d['malformed']} malformed, "
        f"{d['empty_response']} empty responses, {d['cut_off']} cut off -> train {s['train']['rows']} rows "
        f"({s['train']['tokens']} tokens, {s['train']['label_tokens']} learned), validation "
        f"{s['validation']['rows']} rows in {len(manifest['shards'])} shards at {cfg.out_dir}"
    )


@dataclass(frozen=True)
class JobSpec:
    name: str  # the knowlm subcommand and the JOB of `knowlm config show JOB`
    script: str | None  # jobs/<script>; None: no job script (serve)
    config: str  # "module:Class" of the config model
    run: str | None  # "module:function" taking the config; None: not run through run_job
    help: str
    ray: bool = True  # start Ray before run (False: run starts it itself, or needs none)
    report: Callable[[Any, Any], None] = _print_json

    def config_class(self) -> type:
        module, _, attr = self.config.partition(":")
        return getattr(importlib.import_module(module), attr)

    def run_fn(self) -> Callable[[Any], Any]:
        module, _, attr = (self.run or "").partition(":")
        return getattr(importlib.import_module(module), attr)


JOBS: dict[str, JobSpec] = {
    j.name: j
    for j in (
        # prepare-corpus checks its config, paths and tokenizer before it starts Ray itself.
        JobSpec(
            "prepare-corpus",
            "prepare_corpus.py",
            "knowlm_ray.config:CorpusConfig",
            "knowlm_ray.corpus.pipeline:run",
            "Ray Data corpus -> Arrow shards + manifest",
            ray=False,
            report=_corpus_report,
        ),
        JobSpec(
            "pretrain",
            "pretrain.py",
            "knowlm_ray.config:PretrainConfig",
            "knowlm_ray.train.pretrain:run",
            "DeepSpeed pretraining on Ray Train",
        ),
        JobSpec(
            "prepare-instructions",
            "prepare_instructions.py",
            "knowlm_ray.config:InstructionsConfig",
            "knowlm_ray.instruct.prepare:run",
            "alpaca files / IE records -> masked instruction shards",
            report=_instructions_report,
        ),
        JobSpec(
            "finetune-lora",
            "finetune_lora.py",
            "knowlm_ray.config:FinetuneConfig",
            "knowlm_ray.train.lora:run",
            "LoRA instruction tuning on Ray Train",
        ),
        JobSpec(
            "batch-extract",
            "batch_extract.py",
            "knowlm_ray.config:BatchExtractConfig",
            "knowlm_ray.ie.batch:run",
            "knowledge-graph extraction over a corpus (Ray Data actor pool)",
        ),
        JobSpec(
            "evaluate",
            "evaluate.py",
            "knowlm_ray.config:EvaluateConfig",
            "knowlm_ray.ie.evaluate:run",
            "extraction P/R/F1 on gold records and / or perplexity on shards",
            ray=False,
        ),  # one process
        JobSpec(
            "serve",
            None,
            "knowlm_ray.serve.options:AppArgs",
            None,
            "the Serve application's args (serve run CONFIG, knowlm serve --set KEY=VALUE)",
        ),
    )
}


def execute(spec: JobSpec, cfg: Any) -> Any:
    """Run a validated config: start Ray if the job wants it, run, report; user errors exit 2."""
    with user_errors():
        if spec.ray:
            from knowlm_ray.runtime import init_ray

            init_ray()
        result = spec.run_fn()(cfg)
    spec.report(result, cfg)
    return result


def run_job(name: str, argv: list[str] | None = None, description: str | None = None) -> Any:
    """The body of every ``jobs/X.py``: parse ``--config FILE [key.path=value ...]`` (``--help``
    lists every config key), validate, run (``execute``)."""
    from knowlm_ray.config import parse_job_args

    spec = JOBS[name]
    cfg = parse_job_args(
        spec.config_class(), argv, description=description or spec.help, job=name, prog=f"jobs/{spec.script}"
    )
    return execute(spec, cfg)


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """A ``knowlm`` subcommand per job (same config, overrides and --help as its script), and
    ``knowlm config show JOB``."""
    from knowlm_ray.config import add_job_arguments

    for spec in JOBS.values():
        if spec.run is None:
            continue
        p = sub.add_parser(
            spec.name,
            help=spec.help,
            description=spec.help + (f"; the same job as `python jobs/{spec.script}`." if spec.script else "."),
        )
        add_job_arguments(p, spec.config_class(), spec.name)
        p.set_defaults(fn=_job_command(spec))

    p = sub.add_parser("config", help="print a job's config keys as commented YAML")
    cmds = p.add_subparsers(dest="config_cmd", required=True)
    show = cmds.add_parser(
        "show",
        help="every key of JOB's config: its default (null: required) and "
        "description; save it, fill in the required keys, run it",
    )
    show.add_argument("job", metavar="JOB", choices=list(JOBS), help=", ".join(JOBS))
    show.set_defaults(fn=lambda a: print(config_template(a.job)))


def _job_command(spec: JobSpec) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        from knowlm_ray.config import config_from_args

        with user_errors():
            cfg = config_from_args(spec.config_class(), a)
        execute(spec, cfg)

    return run


def config_template(name: str) -> str:
    """``knowlm config show NAME``: the job's config as YAML, every key with its description."""
    from knowlm_ray.config import commented_yaml

    spec = JOBS[name]
    cls = spec.config_class()
    doc = (cls.__doc__ or "").strip().splitlines()
    head = [f"# {name}: {spec.help}"]
    if spec.script:
        head += [
            f"# python jobs/{spec.script} --config THIS.yaml [key.path=value ...]",
            f"# knowlm {name} --config THIS.yaml [key.path=value ...]",
        ]
    head += ["# Every key with its default; a required key is null: fill it in. Delete the keys you do not change."]
    if doc and doc[0] and not doc[0].startswith("``"):
        head.append(f"# {doc[0]}")
    if spec.script is None:  # serve: a Ray Serve config file, the keys are the application's args
        body = [
            "proxy_location: HeadOnly",
            "http_options:",
            "  host: 127.0.0.1",
            "  port: 8000",
            "applications:",
            "  - name: knowlm",
            "    route_prefix: /",
            "    import_path: knowlm_ray.serve.app:build_app",
            "    args:",
        ] + commented_yaml(cls, indent=6)
        head[1:1] = ["# serve run THIS.yaml   (knowlm serve --model DIR --set KEY=VALUE takes the same args)"]
    else:
        body = commented_yaml(cls)
    return "\n".join(head + [""] + body)
