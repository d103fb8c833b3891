"""knowlm_ray.paths: a config's relative paths when a job runs from `ray job submit --working-dir`."""

from __future__ import annotations

import json
import os

import pytest

from knowlm_ray.config import CorpusConfig, PretrainConfig, load_config, parse_job_args
from knowlm_ray.paths import JobPathError, check_job_paths

PRESET = "jobs/configs/tiny.yaml"


@pytest.fixture
def uploaded(tmp_path, monkeypatch, repo_root):
    """A Ray job's entrypoint in an uploaded copy of the checkout (tracked files, no artifacts/)."""
    copy = tmp_path / "_ray_pkg_0123"
    (copy / "jobs" / "configs").mkdir(parents=True)
    (copy / PRESET).write_text((repo_root / PRESET).read_text())
    (copy / "data").mkdir()
    (copy / "data" / "tokenizer").mkdir()
    monkeypatch.chdir(copy)
    monkeypatch.delenv("KNOWLM_ROOT", raising=False)
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR",
        json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}),
    )
    return copy


def test_relative_path_into_the_uploaded_copy_is_refused_with_how_to_fix(uploaded, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_job_args(PretrainConfig, ["--config", PRESET])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0  # one line
    assert "model: artifacts/demo/tiny is relative" in err
    assert "absolute paths" in err and "KNOWLM_ROOT=$PWD" in err


def test_absolute_paths_and_files_in_the_copy_pass(uploaded, tmp_path):
    outside = tmp_path / "elsewhere"
    cfg = parse_job_args(
        PretrainConfig,
        [
            "--config",
            PRESET,
            f"model={outside}/tiny",
            f"data={outside}/corpus",
            f"output_dir={outside}/out",
            f"storage_path={outside}/rr",
        ],
    )
    assert cfg.output_dir == str(outside / "out")
    # CorpusConfig keeps relative paths: one the copy holds is read from it; a missing one is refused
    inputs = 'inputs=[{path: data, source: s, lang: en, glob: "**/*"}]'
    corpus = load_config(CorpusConfig, None, ["tokenizer=data/tokenizer", f"out_dir={outside}/c", inputs])
    assert check_job_paths(corpus) is corpus
    with pytest.raises(JobPathError, match="out_dir: artifacts/corpus is relative"):
        check_job_paths(load_config(CorpusConfig, None, ["tokenizer=data/tokenizer", inputs]))


def test_knowlm_root_makes_relative_paths_mean_the_users_checkout(uploaded, tmp_path, monkeypatch, repo_root):
    root = tmp_path / "checkout"
    (root / "jobs" / "configs").mkdir(parents=True)
    (root / PRESET).write_text((repo_root / PRESET).read_text())
    monkeypatch.setenv("KNOWLM_ROOT", str(root))
    cfg = parse_job_args(PretrainConfig, ["--config", PRESET, "max_steps=2"])
    assert os.getcwd() == str(root)
    assert cfg.model == str(root / "artifacts/demo/tiny")
    assert cfg.output_dir == str(root / "artifacts/demo/pretrained")


def test_bad_knowlm_root_is_one_line(uploaded, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KNOWLM_ROOT", str(tmp_path / "nope"))
    with pytest.raises(SystemExit) as exc:
        parse_job_args(PretrainConfig, ["--config", PRESET])
    assert exc.value.code == 2
    assert "KNOWLM_ROOT=" in capsys.readouterr().err


def test_outside_a_ray_job_nothing_changes(tmp_path, monkeypatch, repo_root):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("KNOWLM_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = parse_job_args(PretrainConfig, ["--config", str(repo_root / PRESET)])
    assert cfg.output_dir == str(tmp_path / "artifacts/demo/pretrained")
