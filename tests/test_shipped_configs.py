"""Every YAML shipped in jobs/configs and serve_configs: it validates against its config class, and
its first line is the exact command that runs it (naming a script and config that exist)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from knowlm_ray.config import load_config
from knowlm_ray.entry import JOBS

REPO = Path(__file__).resolve().parents[1]
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
SERVE_CONFIGS = sorted((REPO / "serve_configs").glob("*.yaml"))
BY_SCRIPT = {f"jobs/{j.script}": j for j in JOBS.values() if j.script}


def _command(path: Path) -> list[str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), f"{path.name}: the first line is not a comment naming its command"
    words = shlex.split(first[2:].split("   (")[0])
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value settings before it
        words.pop(0)
    return words


def test_every_directory_has_configs():
    assert len(JOB_CONFIGS) >= 7 and len(SERVE_CONFIGS) >= 3


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config_header_names_its_command_and_validates(path):
    cmd = _command(path)
    assert cmd[:1] == ["python"] and cmd[2] == "--config", cmd
    assert (REPO / cmd[1]).is_file() and cmd[1] in BY_SCRIPT, f"{path.name}: no job script {cmd[1]}"
    assert (REPO / cmd[3]).resolve() == path, f"{path.name}: the header runs {cmd[3]}"
    cls = BY_SCRIPT[cmd[1]].config_class()
    assert isinstance(load_config(cls, path), cls)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_header_names_its_command_and_args_validate(path):
    from knowlm_ray.serve.options import AppArgs

    cmd = _command(path)
    assert cmd[:2] == ["serve", "run"] and (REPO / cmd[2]).resolve() == path, cmd
    apps = yaml.safe_load(path.read_text(encoding="utf-8"))["applications"]
    assert apps
    for app in apps:
        assert app["import_path"] == "knowlm_ray.serve.app:build_app"
        assert isinstance(load_config(AppArgs, base=app["args"]), AppArgs)
