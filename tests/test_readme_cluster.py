"""The README's cluster workflow, typed as the README types it, from a fresh copy of the checkout.

The ```bash block after "submit the same scripts as Ray jobs" runs in one bash, in a copy of the
checkout's files (no artifacts/; .venv links to this one), from a shell whose PATH has no
environment on it and no RAY_* variables: the README's own lines activate the environment and
choose the auth mode. Three additions, all outside the README's words: ``ray start`` gets its own
ports and temp dir (other tests' Rays may run beside it), the client finds that Ray through
RAY_ADDRESS, and the job gets small overrides (4 steps) at the end of its command line. The
README's ``ray stop`` is not run: it stops every Ray on the machine; this test's Ray is stopped
by the process ids that name its temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.ray_processes import stop_ray

REPO = Path(__file__).resolve().parents[1]
INTRO = "submit the same scripts as Ray jobs"
OVERRIDES = "max_steps=4 save_every=2 log_every=2 warmup_steps=1"

pytestmark = pytest.mark.slow


def readme_cluster_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    at = text.index(INTRO)
    block = re.search(r"```bash\n(.*?)```", text[at:], re.S)
    assert block, f"no ```bash block after {INTRO!r} in README.md"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_copy(dst: Path) -> None:
    """The checkout's files as a clone has them: tracked and new, never the ignored ones."""
    names = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    (dst / ".venv").symlink_to(REPO / ".venv")  # what `make setup` made


def _write_corpus(out: Path, tokenizer_dir: Path) -> None:
    """artifacts/demo/corpus as prepare_corpus writes it, small: 64 rows of the sample text."""
    import json

    import pyarrow as pa
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = []
    for line in (REPO / "data/sample/en.jsonl").read_text(encoding="utf-8").splitlines():
        try:  # the sample holds malformed lines on purpose (the corpus pipeline counts them)
            text = json.loads(line).get("text")
        except (ValueError, AttributeError):
            continue
        if isinstance(text, str) and len(text) > 40:
            texts.append(text)
    rows = [tok(texts[i % len(texts)])["input_ids"][:96] + [tok.eos_token_id] for i in range(64)]
    (out / "shards").mkdir(parents=True)
    table = pa.table(
        {
            "input_ids": pa.array(rows, type=pa.list_(pa.int32())),
            "doc_id": [f"d{i}" for i in range(len(rows))],
            "source": ["test"] * len(rows),
        }
    )
    with pa.ipc.new_file(str(out / "shards" / "part-00000.arrow"), table.schema) as w:
        w.write_table(table)
    (out / "manifest.json").write_text(json.dumps({"shards": 1}), encoding="utf-8")


def script_from_readme(lines: list[str], ray_port: int, dash_port: int, temp_dir: str) -> str:
    out = ["set -eo pipefail"]
    for line in lines:
        command = line.split("#")[0].strip() if not line.lstrip().startswith("#") else ""
        if not command:
            continue
        if command == "ray stop":
            continue  # every Ray on the machine: see the module docstring
        if command.startswith("ray start"):
            command += (
                f" --port={ray_port} --dashboard-port={dash_port} --ray-client-server-port={_free_port()}"
                f" --dashboard-agent-listen-port={_free_port()}"
                f" --dashboard-host=127.0.0.1 --temp-dir={temp_dir} --disable-usage-stats"
            )
            out.append(command)
            out.append(f"export RAY_ADDRESS=http://127.0.0.1:{dash_port}")
            continue
        if command.startswith("ray job submit"):
            command += f" {OVERRIDES}"
        out.append(command)
    return "\n".join(out) + "\n"


def test_readme_cluster_block_runs_as_typed(tiny_model, tmp_path):
    lines = readme_cluster_block()
    assert lines[0].startswith("source .venv/bin/activate"), lines  # before any `ray` command
    assert any(line.startswith("export RAY_AUTH_MODE=") for line in lines), "the README chooses the auth mode"
    assert any(line.startswith("ray start --head") for line in lines)
    assert any(line.startswith("ray job submit --working-dir . --") for line in lines)

    checkout = tmp_path / "knowlm-ray"
    _fresh_copy(checkout)
    assert not (checkout / "artifacts").exists()
    shutil.copytree(tiny_model, checkout / "artifacts/demo/tiny")  # `make demo`'s first two steps, small
    _write_corpus(checkout / "artifacts/demo/corpus", tiny_model)

    temp_dir = tempfile.mkdtemp(prefix="krc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    script = script_from_readme(lines, _free_port(), _free_port(), temp_dir)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "VIRTUAL_ENV", "PYTHON")) and k not in ("PATH", "KNOWLM_ROOT")
    }
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # a fresh shell: no environment activated
    t0 = time.time()
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"script:\n{script}\n--- output (last 4000 chars):\n{log[-4000:]}"
    assert re.search(r"Job '\S+' succeeded", log), log[-4000:]
    out = checkout / "artifacts/demo/pretrained"  # where the preset says, in the user's checkout
    assert (out / "config.json").is_file(), sorted(p.name for p in out.parent.iterdir())
    assert (out / "metrics.jsonl").is_file()
    print(f"README cluster block: {time.time() - t0:.0f}s")
