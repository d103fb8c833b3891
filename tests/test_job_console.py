"""Every job's quiet console (knowlm_ray/entry.py: ``job_console``): the terminal shows the start
line naming the log, the job's own lines, ``done in`` and the report; Ray's and the libraries'
output goes to the log under the run's output; a failure shows the log's tail; a user error stays
one line on stderr; ``KNOWLM_VERBOSE=1`` / ``--verbose`` keep everything on the console. Each run is
a subprocess, whose terminal is the captured stdout / stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from knowlm_ray.entry import JOBS

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KNOWLM_VERBOSE")}
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), **extra)
    return env


@pytest.mark.slow
def test_a_job_prints_a_few_lines_and_logs_ray_beside_its_output(tiny_model, tmp_path):
    """`knowlm prepare-instructions` on the sample: five lines on the terminal, Ray's in the log."""
    out_dir = tmp_path / "instructions"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "knowlm"),
            "prepare-instructions",
            "--config",
            "jobs/configs/tiny_instructions.yaml",
            f"tokenizer={tiny_model}",
            f"out_dir={out_dir}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = tmp_path / "instructions.log"  # beside out_dir: out_dir is replaced whole
    out = done.stdout.splitlines()
    assert out[0] == f"prepare-instructions: {JOBS['prepare-instructions'].help}; full log: {log}"
    assert out[-2].startswith("prepare-instructions: done in")
    assert out[-1].startswith("prepare_instructions: 430 read,") and out[-1].endswith(f"at {out_dir}")
    assert len(out) <= 6, done.stdout  # (+ Ray Data's progress on a slow box)
    assert all(line.startswith("    Total Progress: ") for line in out[1:-2]), done.stdout
    assert done.stderr == ""
    text = log.read_text(encoding="utf-8")
    assert "Started a local Ray instance" in text and "Running Dataset" in text  # Ray's and Ray Data's lines
    assert "Ray instance" not in done.stdout
    assert not (out_dir / "instructions.log").exists() and (out_dir / "manifest.json").is_file()


# A job whose run is replaced by one that prints like Ray and then fails (or not): the console's
# behaviour without a Ray start.
_FAKE = """
import dataclasses, sys
import knowlm_ray.corpus.pipeline as pipeline
from knowlm_ray import entry
from knowlm_ray.config import ConfigError
from knowlm_ray.entry import run_job

entry.JOBS["prepare-corpus"] = dataclasses.replace(
    entry.JOBS["prepare-corpus"], report=lambda result, cfg: print("result:", result)
)

def run(cfg):
    print("[prepare_corpus] reading", flush=True)
    for i in range(100):
        print(f"(RayWorker pid=1) ray line {{i}}")
    {end}

pipeline.run = run
run_job("prepare-corpus", sys.argv[1:])
"""


def _fake_job(tmp_path: Path, end: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(_FAKE.format(end=end)), encoding="utf-8")
    argv = ["--config", "jobs/configs/tiny_corpus.yaml", f"tokenizer={tmp_path}", f"out_dir={tmp_path / 'corpus'}"]
    return subprocess.run(
        [sys.executable, str(script), *argv, *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_failing_job_shows_the_logs_last_lines_and_its_traceback(tmp_path):
    done = _fake_job(tmp_path, 'raise RuntimeError("the worker died")')
    assert done.returncode == 1, done.stdout + done.stderr
    log = tmp_path / "corpus.log"
    out = done.stdout.splitlines()
    print(done.stdout, done.stderr, sep="\n--- stderr\n")  # shown when an assertion below fails
    assert out[0].endswith(f"full log: {log}")
    assert out[1] == "    [prepare_corpus] reading"  # the job's own line, echoed before the failure
    assert out[2].startswith("prepare-corpus: FAILED after") and out[2].endswith(f"40 lines of {log}:")
    assert out[3:] == [f"    (RayWorker pid=1) ray line {i}" for i in range(60, 100)]
    assert done.stderr.count("Traceback") == 1 and done.stderr.rstrip().endswith("RuntimeError: the worker died")
    assert "RuntimeError: the worker died" in log.read_text(encoding="utf-8")


def test_a_quiet_run_ends_with_done_and_the_result(tmp_path):
    done = _fake_job(tmp_path, "return 7")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == 4 and out[1] == "    [prepare_corpus] reading" and done.stderr == ""
    assert out[2].startswith("prepare-corpus: done in") and out[3] == "result: 7"  # after the console: not logged
    log = (tmp_path / "corpus.log").read_text(encoding="utf-8")
    assert "ray line 99" in log and "done in" in log and "result: 7" not in log


def test_a_user_error_stays_one_line_on_stderr(tmp_path):
    done = _fake_job(tmp_path, 'raise ConfigError("tokenizer: not a tokenizer dir")')
    assert done.returncode == 2
    assert done.stderr == "error: tokenizer: not a tokenizer dir\n"
    assert done.stdout.splitlines()[1:] == ["    [prepare_corpus] reading"]  # no tail, no traceback
    assert "ray line 99" in (tmp_path / "corpus.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("how", ["KNOWLM_VERBOSE=1", "--verbose"])
def test_verbose_keeps_everything_on_the_console(tmp_path, how):
    args, env = ((), {"KNOWLM_VERBOSE": "1"}) if how.startswith("KNOWLM") else (("--verbose",), {})
    done = _fake_job(tmp_path, "return 7", *args, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[prepare_corpus] reading"] + [
        f"(RayWorker pid=1) ray line {i}" for i in range(100)
    ] + ["result: 7"]
    assert not (tmp_path / "corpus.log").exists()


@pytest.mark.parametrize("name", [n for n, s in JOBS.items() if s.run is not None])
def test_help_says_where_the_log_goes(name, capsys):
    from knowlm_ray.cli import build_parser
    from knowlm_ray.entry import run_job

    spec = JOBS[name]
    for show_help in (lambda: run_job(name, ["--help"]), lambda: build_parser().parse_args([name, "--help"])):
        with pytest.raises(SystemExit):
            show_help()
        text = " ".join(capsys.readouterr().out.split())
        assert spec.log_help in text and "--verbose" in text and "KNOWLM_VERBOSE=1" in text
