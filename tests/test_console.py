"""knowlm_ray.console: the terminal shows the steps, the log file everything else (`knowlm demo`'s
console). Each case runs in a subprocess, whose terminal is the captured stdout/stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_everything_but_the_steps_goes_to_the_log(tmp_path):
    done = _run(
        f"""
        import logging, os, subprocess, sys, time
        from knowlm_ray.console import quiet_console, say
        from knowlm_ray.demo import _stage
        with quiet_console({str(tmp_path / "run.log")!r}, progress=r"^\\[\\w+\\] step \\d+", every_s=0.0):
            with _stage(1, 1, "a step"):
                print("a library's print")
                logging.getLogger("ray.data").warning("a library's warning")
                os.write(2, b"a C library's stderr\\n")
                subprocess.run(["echo", "a subprocess's output"], check=True)
                print("(RayTrainWorker pid=12) [pretrain] step 20/200 loss 6.1", flush=True)
                time.sleep(0.6)  # the progress thread reads the log every 0.2 s
                say("the step's result")
        print("after: on the terminal again")
    """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "run.log").read_text()
    for line in (
        "a library's print",
        "a library's warning",
        "a C library's stderr",
        "a subprocess's output",
        "the step's result",
        "[1/1] a step: done in",
    ):
        assert line in log
    out = done.stdout.splitlines()
    assert out[0] == f"full log: {tmp_path / 'run.log'}"
    assert [line for line in out[1:] if line] == [
        "[1/1] a step ...",
        "    [pretrain] step 20/200 loss 6.1",
        "the step's result",
        out[-2],
        "after: on the terminal again",
    ], done.stdout
    assert out[-2].startswith("[1/1] a step: done in")
    assert done.stderr == ""


def test_a_failing_step_shows_the_logs_last_lines_and_fails(tmp_path):
    done = _run(
        f"""
        from knowlm_ray.console import quiet_console
        from knowlm_ray.demo import _stage
        with quiet_console({str(tmp_path / "run.log")!r}):
            with _stage(2, 7, "pretrain"):
                for i in range(100):
                    print(f"ray line {{i}}")
                raise RuntimeError("the worker died")
    """,
        tmp_path,
    )
    assert done.returncode != 0
    out = done.stdout.splitlines()
    assert out[3].startswith("[2/7] pretrain: FAILED after") and out[3].endswith(f"40 lines of {tmp_path / 'run.log'}:")
    assert out[4:] == [f"    ray line {i}" for i in range(60, 100)]
    assert "RuntimeError: the worker died" in done.stderr  # the traceback, once, on the terminal
    assert done.stderr.count("Traceback") == 1
    assert "RuntimeError: the worker died" in (tmp_path / "run.log").read_text()


@pytest.mark.slow
def test_ray_output_goes_to_the_log(tmp_path):
    """A local Ray's start-up lines, a task's print and Ray Data's messages land in the log."""
    done = _run(
        f"""
        import ray
        from knowlm_ray.console import quiet_console, say
        from knowlm_ray.runtime import init_ray
        with quiet_console({str(tmp_path / "run.log")!r}):
            init_ray(num_cpus=1, object_store_mb=128)
            ray.get(ray.remote(lambda: print("hello from a task")).remote())
            import time; time.sleep(1.5)  # Ray forwards worker lines to the driver about once a second
            say("rows:", ray.data.range(10).count())
            ray.shutdown()
    """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[1:] == ["rows: 10"], done.stdout
    log = (tmp_path / "run.log").read_text()
    assert "hello from a task" in log and "Started a local Ray instance" in log
