"""The one way into every job and every ``knowlm`` command, and the one user-error boundary.

    python jobs/pretrain.py --config F [key.path=value ...]   ->  run_job("pretrain", ...)
    knowlm pretrain --config F [key.path=value ...]           ->  the same JobSpec, the same run_job
    knowlm <any subcommand>                                   ->  inside user_errors()

``user_errors()``: a user error (``knowlm_ray.errors.UserError``: a bad config, a path that does
not exist, input that cannot be used) becomes one line on stderr, ``error: <message>``, and exit
status 2; anything else is a bug and keeps its traceback.

``JOBS`` names each job once: its ``knowlm`` subcommand, its script in ``jobs/``, its config class,
the library function that runs it, whether Ray starts before it, how its result is reported and
where its log goes. ``knowlm config show JOB`` prints a job's config as commented YAML
(``config_template``).

A quiet console (``job_console``, knowlm_ray/console.py): while a job runs, file descriptors 1 and
2 point at its log file (``JobSpec.log``, under the run's output), so Ray's, Ray Data's, Train's
and the libraries' output lands there. The terminal shows the start line with the log's path, the
job's own ``[tag] ...`` lines (its steps; training's ``step`` lines and Ray Data's progress at
most one per ``PROGRESS_EVERY_S``), ``done in``, and then the report, printed to the real stdout;
on a failure the log's last lines and the traceback. A user error stays one line on the real
stderr (``user_errors`` sits outside the console). ``--verbose`` or ``KNOWLM_VERBOSE=1``: no log
file, everything on the console. Under ``ray job submit`` the job's stdout is the job log
(``ray job logs -f``): it shows the same few lines, the full log is the file it names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from knowlm_ray.errors import user_error_of, user_errors


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


def _evaluate_report(report: dict, cfg: Any) -> None:
    """Micro P / R / F1 per task and perplexity on one line each; the whole report is a file."""
    for task, scores in (report.get("extraction") or {}).get("scores", {}).items():
        parts = (
            [("", scores)]
            if "micro" in scores
            else [(k, v) for k, v in scores.items() if isinstance(v, dict) and "micro" in v]
        )
        for kind, part in parts:
            m = part["micro"]
            name = f"{task} {kind}".strip()
            print(f"evaluate: {name} P {m['precision']:.4f} R {m['recall']:.4f} F1 {m['f1']:.4f}")
    if report.get("perplexity"):
        ppl = report["perplexity"]
        print(f"evaluate: perplexity {ppl['perplexity']:.3f} over {ppl['tokens']} tokens")
    print(f"evaluate: full report (per type, counts) in {Path(cfg.out_dir) / 'report.json'}")


def _instructions_report(manifest: dict, cfg: Any) -> None:
    s, d = manifest["splits"], manifest["dropped"]
    print(
        f"prepare_instructions: {manifest['read']} read, {d['malformed']} malformed, "
        f"{d['empty_response']} empty responses, {d['cut_off']} cut off -> train {s['train']['rows']} rows "
        f"({s['train']['tokens']} tokens, {s['train']['label_tokens']} learned), validation "
        f"{s['validation']['rows']} rows in {len(manifest['shards'])} shards at {cfg.out_dir}"
    )


def _generate_report(manifest: dict, cfg: Any) -> None:
    t, i = manifest["tasks"], manifest["instructions"]
    dropped = ", ".join(f"{k} {v}" for k, v in i["dropped"].items())
    print(
        f"generate_instructions: {t['planned']} tasks, {t['answered']} answered, {t['malformed']} malformed, "
        f"{t['failed']} failed, {t['pending']} pending; {i['candidates']} instructions, {i['kept']} kept"
        f"{f' (dropped: {dropped})' if dropped else ''} -> {Path(cfg.out_dir) / 'generated.jsonl'}"
    )


def _curate_report(manifest: dict, cfg: Any) -> None:
    d = manifest["dropped"]
    print(
        f"curate_instructions: {manifest['read']} read, {manifest['malformed']} malformed, {sum(d.values())} dropped"
        f"{' (' + ', '.join(f'{k} {v}' for k, v in d.items()) + ')' if d else ''} -> {manifest['kept']} kept in "
        f"{Path(cfg.out_dir) / 'kept.jsonl'}"
    )


def _beside(path: str) -> Path:
    p = Path(path).expanduser().resolve()
    return p.parent / (p.name + ".log")


def _beside_out_dir(cfg: Any) -> Path:
    return _beside(cfg.out_dir)


def _in_out_dir(name: str) -> Callable[[Any], Path]:
    return lambda cfg: Path(cfg.out_dir).expanduser().resolve() / name


def _train_log(name: str) -> Callable[[Any], Path | None]:
    def where(cfg: Any) -> Path | None:
        if "://" not in cfg.storage_path:  # Ray Train's run dir (checkpoints are its subdirs)
            return Path(cfg.storage_path, cfg.run_name, name)
        if "://" not in cfg.output_dir:
            return _beside(cfg.output_dir)
        return None  # both on remote storage: no local file to write; the console stays verbose

    return where


@dataclass(frozen=True)
class JobSpec:
    name: str  # the knowlm subcommand and the JOB of `knowlm config show JOB`
    script: str | None  # jobs/<script>; None: no job script (serve)
    config: str  # "module:Class" of the config model
    run: str | None  # "module:function" taking the config; None: not run through run_job
    help: str
    ray: bool = True  # start Ray before run (False: run starts it itself, or needs none)
    report: Callable[[Any, Any], None] = _print_json
    # The job's log file for the quiet console (None: verbose), and where that is, for --help.
    log: Callable[[Any], Path | None] | None = None
    log_help: str = ""
    data_progress: bool = False  # runs Ray Data: its progress (every 10 s) into the log

    def where_log(self) -> str:
        return textwrap.fill(
            f"Console: the job's steps and result; everything else (Ray's, the libraries' output) "
            f"goes to {self.log_help}, whose path is printed first; on a failure its last lines are "
            f"shown. --verbose or KNOWLM_VERBOSE=1: everything on the console.",
            width=100,
        )

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
            log=_beside_out_dir,
            log_help="OUT_DIR.log, beside out_dir (out_dir itself is replaced whole)",
            data_progress=True,
        ),
        JobSpec(
            "pretrain",
            "pretrain.py",
            "knowlm_ray.config:PretrainConfig",
            "knowlm_ray.train.pretrain:run",
            "DeepSpeed pretraining on Ray Train",
            log=_train_log("pretrain.log"),
            log_help="storage_path/run_name/pretrain.log, in Ray Train's run dir (with a remote "
            "storage_path: OUTPUT_DIR.log beside output_dir)",
        ),
        JobSpec(
            "prepare-instructions",
            "prepare_instructions.py",
            "knowlm_ray.config:InstructionsConfig",
            "knowlm_ray.instruct.prepare:run",
            "alpaca files / IE records -> masked instruction shards",
            report=_instructions_report,
            log=_beside_out_dir,
            log_help="OUT_DIR.log, beside out_dir (out_dir itself is replaced whole)",
            data_progress=True,
        ),
        JobSpec(
            "finetune-lora",
            "finetune_lora.py",
            "knowlm_ray.config:FinetuneConfig",
            "knowlm_ray.train.lora:run",
            "LoRA instruction tuning on Ray Train",
            log=_train_log("finetune_lora.log"),
            log_help="storage_path/run_name/finetune_lora.log, in Ray Train's run dir (with a remote "
            "storage_path: OUTPUT_DIR.log beside output_dir)",
        ),
        JobSpec(
            "batch-extract",
            "batch_extract.py",
            "knowlm_ray.config:BatchExtractConfig",
            "knowlm_ray.ie.batch:run",
            "knowledge-graph extraction over a corpus (Ray Data actor pool)",
            log=_in_out_dir("batch_extract.log"),
            log_help="out_dir/batch_extract.log",
            data_progress=True,
        ),
        JobSpec(
            "evaluate",
            "evaluate.py",
            "knowlm_ray.config:EvaluateConfig",
            "knowlm_ray.ie.evaluate:run",
            "extraction P/R/F1 on gold records and / or perplexity on shards",
            ray=False,
            report=_evaluate_report,
            log=_in_out_dir("evaluate.log"),
            log_help="out_dir/evaluate.log",
        ),  # one process
        JobSpec(
            "generate-instructions",
            "generate_instructions.py",
            "knowlm_ray.config:GenerateConfig",
            "knowlm_ray.curate.generate:run",
            "new instructions from an OpenAI-compatible endpoint (Self-Instruct, Evol-Instruct, backtranslation)",
            ray=False,  # one asyncio process: the work is waiting on HTTP
            report=_generate_report,
            log=_in_out_dir("generate_instructions.log"),
            log_help="out_dir/generate_instructions.log",
        ),
        JobSpec(
            "curate-instructions",
            "curate_instructions.py",
            "knowlm_ray.curate.config:CurateConfig",
            "knowlm_ray.curate.pipeline:run",
            "instruction selectors (dedup, ROUGE-L, length, MTLD, perplexity, CIRS, language, PII) on Ray Data",
            report=_curate_report,
            log=_beside_out_dir,
            log_help="OUT_DIR.log, beside out_dir (out_dir itself is replaced whole)",
            data_progress=True,
        ),
        JobSpec(
            "edit-stats",
            "edit_stats.py",
            "knowlm_ray.edit.stats_config:EditStatsConfig",
            "knowlm_ray.edit.stats:run",
            "key statistics E[k k^T] for ROME / MEMIT over corpus shards (Ray Data actor pool, resumable, cached)",
            log=lambda cfg: cfg.log_file(),
            log_help="CACHE_DIR/edit_stats.log (cache_dir, or its default)",
            data_progress=True,
        ),
        JobSpec(
            "serve",
            None,
            "knowlm_ray.serve.options:AppArgs",
            None,
            "the Serve application's args (serve run CONFIG, knowlm serve --set KEY=VALUE)",
        ),
    )
}


# Echoed from the log: the jobs' own lines ("[prepare_corpus] ...", "[pretrain] ...": the tag is
# the job's or the train run's name) always; their progress lines (training's "step N/M loss ...",
# batch extraction's "block N done") and Ray Data's ("Total Progress: N/M", from its
# LoggingExecutionProgressManager) at most one per PROGRESS_EVERY_S. A validation line
# ("step N val_loss ...") is shown every time.
STEPS = r"^\[[A-Za-z][\w.-]*\] "
PROGRESS = r"^\[[A-Za-z][\w.-]*\] (step \d+/|block +\d+ done)|^Total Progress: [1-9]"
PROGRESS_EVERY_S = 15.0
VERBOSE_ENV = "KNOWLM_VERBOSE"
_DATA_PROGRESS_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _stop_ray() -> None:
    """Disconnect the Ray this job started, inside the console: the worker lines Ray still
    forwards land in the log, not after the report."""
    try:
        import ray

        ray.shutdown()
    except Exception as exc:  # the job's result stands
        print(f"ray.shutdown: {exc!r}", file=sys.stderr)


@contextlib.contextmanager
def job_console(spec: JobSpec, cfg: Any, verbose: bool = False) -> Iterator[Path | None]:
    """The quiet console around one job run (see the module docstring); yields the log's path,
    None when verbose."""
    log = None if verbose_requested(verbose) or spec.log is None else spec.log(cfg)
    if log is None:
        yield None
        return
    from knowlm_ray.console import drain_progress, quiet_console, say, show_tail

    if spec.data_progress and "ray.data" not in sys.modules and os.environ.get(_DATA_PROGRESS_ENV, "1") == "1":
        # knowlm_ray.runtime's quiet default turns them off for the console; the log can hold them
        os.environ[_DATA_PROGRESS_ENV] = "0"
    ray_before = _ray_up()
    t0 = time.perf_counter()
    with quiet_console(
        log, progress=PROGRESS, every_s=PROGRESS_EVERY_S, echo=STEPS, title=f"{spec.name}: {spec.help}"
    ) as path:
        print(f"==== {datetime.now():%Y-%m-%d %H:%M:%S} {shlex.join(sys.argv)}", flush=True)  # the log only
        try:
            yield path
        except BaseException as exc:
            if not ray_before and _ray_up():
                _stop_ray()
            if user_error_of(exc) is None and not isinstance(exc, SystemExit):
                show_tail(f"{spec.name}: FAILED after {time.perf_counter() - t0:.1f}s")
            raise
        if not ray_before and _ray_up():
            _stop_ray()
        drain_progress()
        say(f"{spec.name}: done in {time.perf_counter() - t0:.1f}s")


def execute(spec: JobSpec, cfg: Any, verbose: bool = False) -> Any:
    """Run a validated config in the job's quiet console: start Ray if the job wants it, run; then
    report to the real stdout. A user error: one line on the real stderr, exit 2."""
    with user_errors(), job_console(spec, cfg, verbose):
        if spec.ray:
            from knowlm_ray.runtime import init_ray

            init_ray()
        result = spec.run_fn()(cfg)
    spec.report(result, cfg)
    return result


def _add_arguments(p: argparse.ArgumentParser, spec: JobSpec) -> None:
    from knowlm_ray.config import add_job_arguments

    add_job_arguments(p, spec.config_class(), spec.name)
    p.add_argument(
        "--verbose",
        action="store_true",
        help=f"everything on the console, no log file (also: {VERBOSE_ENV}=1)",
    )


def run_job(name: str, argv: list[str] | None = None, description: str | None = None) -> Any:
    """The body of every ``jobs/X.py``: parse ``--config FILE [key.path=value ...] [--verbose]``
    (``--help`` lists every config key), validate, run (``execute``)."""
    from knowlm_ray.config import config_from_args

    spec = JOBS[name]
    ap = argparse.ArgumentParser(
        prog=f"jobs/{spec.script}", description=(description or spec.help).rstrip() + "\n\n" + spec.where_log()
    )
    _add_arguments(ap, spec)
    args = ap.parse_args(argv)
    with user_errors():
        cfg = config_from_args(spec.config_class(), args)
    return execute(spec, cfg, verbose=args.verbose)


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """A ``knowlm`` subcommand per job (same config, overrides and --help as its script), and
    ``knowlm config show JOB``."""
    for spec in JOBS.values():
        if spec.run is None:
            continue
        p = sub.add_parser(
            spec.name,
            help=spec.help,
            description=spec.help
            + (f"; the same job as `python jobs/{spec.script}`." if spec.script else ".")
            + "\n\n"
            + spec.where_log(),
        )
        _add_arguments(p, spec)
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
        execute(spec, cfg, verbose=a.verbose)

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
        head[1:1] = [
            "# serve run THIS.yaml, or on a private Ray: knowlm serve --config THIS.yaml [--model DIR] [--set KEY=VALUE]"
        ]
    else:
        body = commented_yaml(cls)
    return "\n".join(head + [""] + body)
