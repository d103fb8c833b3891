"""`knowlm serve --config FILE`: a Serve config file read as knowlm serve's options (no Ray), and
one real `knowlm serve --config` on a copy of serve_configs/tiny.yaml that serves the test model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from knowlm_ray.cli import build_parser, serve_kwargs
from knowlm_ray.config import ConfigError
from knowlm_ray.runtime import AUTH_MODE_ENV, LOOPBACK_ENV
from knowlm_ray.serve.config_file import APP_NAME, DEPLOYMENT_NAME, IMPORT_PATH, read_serve_config
from knowlm_ray.serve.options import AppArgs
from tests.ray_processes import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "serve_configs" / "tiny.yaml"
BIN = Path(sys.executable).parent


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def _tiny() -> dict:
    return yaml.safe_load(TINY.read_text(encoding="utf-8"))


def test_names_agree_with_the_app():
    from knowlm_ray.serve import app

    assert (APP_NAME, DEPLOYMENT_NAME) == (app.APP_NAME, app.DEPLOYMENT_NAME)
    module, attr = IMPORT_PATH.split(":")
    assert module == app.__name__ and getattr(app, attr) is app.build_app


@pytest.mark.parametrize("path", sorted((REPO / "serve_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_serve_config_maps_to_valid_app_args(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    (app,) = raw["applications"]
    (dep,) = app["deployments"]
    f = read_serve_config(path)
    assert (f.host, f.port, f.proxy_location) == (
        raw["http_options"]["host"],
        raw["http_options"]["port"],
        raw["proxy_location"],
    )
    cfg = AppArgs.model_validate(f.args)
    assert cfg.model == app["args"]["model"]  # as written: resolved against the working dir later
    # the deployment's entry wins over args, as under `serve run`
    assert cfg.num_cpus == dep["ray_actor_options"]["num_cpus"]
    assert cfg.num_gpus == dep["ray_actor_options"].get("num_gpus", 0)
    assert cfg.autoscaling_config == dep["autoscaling_config"] and cfg.num_replicas is None
    for key in ("max_ongoing_requests", "max_queued_requests", "prompt_format", "dtype"):
        if key in app["args"]:
            assert getattr(cfg, key) == app["args"][key], key


def test_deployment_entry_overrides_args_and_num_replicas_maps(tmp_path):
    config = _tiny()
    app = config["applications"][0]
    app["args"].update(num_cpus=2, max_queued_requests=7, num_replicas=3)
    dep = app["deployments"][0]
    dep.pop("autoscaling_config")
    dep.update(num_replicas=2, max_ongoing_requests=9)
    f = read_serve_config(_write(tmp_path / "c.yaml", config))
    assert (f.args["num_cpus"], f.args["num_replicas"], f.args["max_ongoing_requests"]) == (0.5, 2, 9)
    assert f.args["max_queued_requests"] == 7  # args where the deployment says nothing
    del config["http_options"], config["proxy_location"]
    f = read_serve_config(_write(tmp_path / "d.yaml", config))
    assert (f.host, f.port, f.proxy_location) == (None, None, None)  # knowlm serve's defaults then


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c["applications"].append(dict(c["applications"][0], name="b")), "lists 2 applications"),
        (lambda c: c["applications"][0].update(import_path="other.mod:app"), r"applications\[0\]\.import_path"),
        (lambda c: c["applications"][0].pop("import_path"), r"import_path is missing"),
        (lambda c: c["applications"][0].update(route_prefix="/x"), r"route_prefix"),
        (lambda c: c["applications"][0].update(runtime_env={}), r"applications\[0\]\.runtime_env"),
        (lambda c: c.update(grpc_options={}), r": grpc_options is not supported"),
        (lambda c: c["http_options"].update(root_path="/a"), r"http_options\.root_path"),
        (lambda c: c["http_options"].update(port="80a"), r"http_options\.port"),
        (lambda c: c.update(proxy_location="Everywhere"), "proxy_location"),
        (lambda c: c["applications"][0]["deployments"][0].update(health_check_period_s=5), "health_check_period_s"),
        (lambda c: c["applications"][0]["deployments"][0]["ray_actor_options"].update(memory=1), r"options\.memory"),
        (lambda c: c["applications"][0]["deployments"][0].update(name="Other"), r"deployments\[0\]\.name"),
        (lambda c: c["applications"][0]["args"].update(max_batch_sise=4), r"args\.max_batch_sise: unknown key"),
        (lambda c: c["applications"][0]["args"].update(dtype="float8"), r"args\.dtype"),
    ],
)
def test_what_knowlm_serve_cannot_honour_is_one_line_naming_the_key(tmp_path, change, match):
    config = _tiny()
    change(config)
    path = _write(tmp_path / "c.yaml", config)
    with pytest.raises(ConfigError, match=match) as err:
        read_serve_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_relative_paths_resolve_against_the_working_dir_as_serve_run_does(tiny_model, tmp_path, monkeypatch):
    from knowlm_ray.serve.app import build_app

    config = _tiny()
    config["applications"][0]["args"]["model"] = tiny_model.name  # relative
    path = _write(tmp_path / "cfg.yaml", config)  # the file's own dir holds no model
    monkeypatch.chdir(tiny_model.parent)
    app = build_app(read_serve_config(path).args)
    assert app._bound_deployment.init_args[0] == str(tiny_model.resolve())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / tiny_model.name)):
        build_app(read_serve_config(path).args)


def test_flags_override_the_file(tmp_path):
    config = _tiny()
    config["applications"][0]["args"].update(loras={"a": "dir-a", "b": "dir-b"}, prompt_format="zhixi")
    path = _write(tmp_path / "c.yaml", config)

    def kwargs(*argv):
        return serve_kwargs(build_parser().parse_args(["serve", "--config", str(path), *argv]))

    k = kwargs()
    assert (k["model"], k["host"], k["port"], k["proxy_location"]) == (
        "artifacts/demo/merged",
        "127.0.0.1",
        8000,
        "HeadOnly",
    )
    assert k["loras"] == {"a": "dir-a", "b": "dir-b"} and k["max_batch_size"] == 16 and k["num_cpus"] == 0.5
    k = kwargs(
        *("--model", "m2", "--host", "0.0.0.0", "--port", "9001", "--lora", "b=dir-b2", "--lora", "c=dir-c"),
        *("--set", "max_batch_size=4", "--set", "num_replicas=1", "--prompt-format", "oneke"),
    )
    assert (k["model"], k["host"], k["port"], k["prompt_format"]) == ("m2", "0.0.0.0", 9001, "oneke")
    assert k["loras"] == {"a": "dir-a", "b": "dir-b2", "c": "dir-c"}
    assert (k["max_batch_size"], k["num_replicas"], k["max_waiting_requests"]) == (4, 1, 16)
    # without --config: the old defaults, and --model is needed
    plain = serve_kwargs(build_parser().parse_args(["serve", "--model", "m"]))
    assert (plain["host"], plain["port"], plain["proxy_location"], plain["loras"]) == ("127.0.0.1", 8000, None, {})
    from knowlm_ray.errors import InputError

    with pytest.raises(InputError, match="--model DIR, or --config FILE"):
        serve_kwargs(build_parser().parse_args(["serve"]))


def test_a_bad_file_is_one_error_line_before_ray_starts(tmp_path):
    config = _tiny()
    config["applications"].append(dict(config["applications"][0], name="b"))
    path = _write(tmp_path / "c.yaml", config)
    out = subprocess.run(
        [sys.executable, "-m", "knowlm_ray.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {path}: applications lists 2 applications; `knowlm serve --config` runs one (use `serve run` for several)"
    ]


@pytest.mark.slow
def test_knowlm_serve_config_serves_a_copy_of_tiny_yaml(tiny_model, tmp_path):
    """tiny.yaml with the test model (a path relative to the working dir) and a free port in its
    http_options; --set makes it one replica. It answers /healthz and /generate, and stops on SIGTERM."""
    config = _tiny()
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"] = tiny_model.name
    path = _write(tmp_path / "tiny.yaml", config)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", AUTH_MODE_ENV, LOOPBACK_ENV)}
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "knowlm"), "serve", "--config", str(path), "--set", "num_replicas=1"],
            cwd=tiny_model.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "never healthy:\n" + log_path.read_text()[-3000:]
            try:
                r = requests.get(f"{base}/healthz", timeout=5)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert r.json()["model"] == tiny_model.name
        r = requests.post(
            f"{base}/generate",
            json={"instruction": "介绍一下浙江大学", "parameters": {"max_tokens": 4}},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["error"] is None and body["num_output_tokens_cf"] >= 1 and isinstance(body["generated_text"], str)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        assert f"at {base}" in log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_config_show_serve_template_reads_with_a_model_flag(tmp_path):
    """`knowlm config show serve` writes every key (model null): `--model` fills it in."""
    from knowlm_ray.entry import config_template

    path = tmp_path / "serve.yaml"
    path.write_text(config_template("serve"), encoding="utf-8")
    f = read_serve_config(path)
    assert "model" not in f.args and AppArgs.model_validate({**f.args, "model": "m"}).max_batch_size == 16
    k = serve_kwargs(build_parser().parse_args(["serve", "--config", str(path), "--model", "m"]))
    assert (k["model"], k["host"], k["port"]) == ("m", "127.0.0.1", 8000)
