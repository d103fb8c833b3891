"""The commands the README tells a user to type, run as subprocesses exactly as typed.

Each starts its own Ray (the in-process session fixture is not used), so keep them few.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return env


def test_serve_run_config_answers_generate(tiny_model, tmp_path):
    """`serve run serve_configs/tiny.yaml` with only the model path and port changed."""
    cfg = yaml.safe_load((REPO / "serve_configs" / "tiny.yaml").read_text())
    port = _free_port()
    cfg["http_options"]["port"] = port
    cfg["applications"][0]["args"]["model"] = str(tiny_model)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "serve"), "run", str(path)],
        cwd=REPO,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            time.sleep(1)
        else:
            pytest.fail("serve run never became healthy:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        r = requests.post(
            f"{base}/generate",
            timeout=60,
            json={"instruction": "介绍一下浙江大学", "input": "", "parameters": {"max_tokens": 8}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"generated_text", "num_output_tokens_cf", "error"}
        assert body["error"] is None and 1 <= body["num_output_tokens_cf"] <= 8
        bad = requests.post(
            f"{base}/generate", data="{not json", timeout=10, headers={"content-type": "application/json"}
        )
        assert 400 <= bad.status_code < 500 and "error" in bad.json()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # SIGINT is ignored by background jobs; SIGTERM stops it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_job_script_rejects_bad_config_naming_the_key(tmp_path):
    """`python jobs/pretrain.py --config F key=value`: a typo is one clear line and exit 2."""
    out = subprocess.run(
        [sys.executable, "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml", "micro_batchsize=3"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "micro_batchsize: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_prepare_corpus_missing_input_fails_before_ray_starts(tiny_model, tmp_path):
    """A wrong input path is one line naming the input, exit 2, and no Ray started for it."""
    out = subprocess.run(
        [
            sys.executable,
            "jobs/prepare_corpus.py",
            "--config",
            "jobs/configs/tiny_corpus.yaml",
            f"inputs=[{{path: {tmp_path}/nope.jsonl.gz, source: baike, lang: zh}}]",
            f"tokenizer={tiny_model}",
            f"out_dir={tmp_path}/out",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"input 0 (source 'baike'): path not found: {tmp_path}/nope.jsonl.gz" in out.stderr
    assert "Traceback" not in out.stderr and "Ray instance" not in out.stdout + out.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_corpus_job_script_end_to_end(tiny_model, tmp_path):
    """`python jobs/prepare_corpus.py --config jobs/configs/tiny_corpus.yaml` on the shipped sample."""
    out_dir = tmp_path / "corpus"
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/prepare_corpus.py",
            "--config",
            "jobs/configs/tiny_corpus.yaml",
            f"tokenizer={tiny_model}",
            f"out_dir={out_dir}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the quiet console: the log's path, the job's own lines, its result; Ray's lines in the log
    out = proc.stdout.splitlines()
    assert out[0].endswith(f"full log: {out_dir}.log") and out[-1].startswith("prepare_corpus: 224 read")
    assert len(out) <= 10 and "Ray instance" not in proc.stdout + proc.stderr, proc.stdout
    assert "Started a local Ray instance" in (tmp_path / "corpus.log").read_text(encoding="utf-8")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    # data/sample/README.md: 9 malformed lines and 9 exact duplicates across the jsonl/text inputs
    assert stages["malformed"] == 9 and stages["exact_dups"] == 9
    assert stages["tokens"] == sum(s["tokens"] for s in manifest["shards"]) > 0
    assert all((out_dir / s["file"]).is_file() for s in manifest["shards"])
