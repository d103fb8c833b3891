"""serve_configs/*.yaml against Ray Serve's own schema, and build_app's argument handling (no Ray)."""
from __future__ import annotations

import importlib

import pytest
import yaml

from knowlm_ray.config import ConfigError
from knowlm_ray.serve.app import DEPLOYMENT_NAME, AppArgs, build_app, resolve_model_dir


@pytest.fixture(scope="module")
def tiny_config(repo_root) -> dict:
    return yaml.safe_load((repo_root / "serve_configs" / "tiny.yaml").read_text(encoding="utf-8"))


def test_tiny_yaml_validates_with_serve_schema(tiny_config):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(tiny_config)
    assert (cfg.http_options.host, cfg.http_options.port) == ("127.0.0.1", 8000)
    (app,) = cfg.applications
    assert (app.name, app.route_prefix) == ("knowlm", "/")
    (dep,) = app.deployments
    assert dep.name == DEPLOYMENT_NAME  # a wrong name would make Serve reject the override
    assert dep.ray_actor_options.num_cpus == 0.5
    # The deploy schema keeps autoscaling_config as a plain dict: check it with Serve's own model.
    auto = AutoscalingConfig.model_validate(dep.autoscaling_config)
    assert (auto.min_replicas, auto.max_replicas) == (1, 2)


def test_tiny_yaml_import_path_imports_and_args_validate(tiny_config):
    (app,) = tiny_config["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert AppArgs.model_validate(app["args"]).model == "artifacts/demo/merged"


def test_relative_model_resolves_against_cwd(tiny_model, monkeypatch):
    monkeypatch.chdir(tiny_model.parent)
    assert resolve_model_dir(tiny_model.name) == tiny_model.resolve()
    app = build_app({"model": tiny_model.name, "num_replicas": 1})
    assert app is not None


def test_missing_model_dir_names_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "artifacts" / "nope")):
        build_app({"model": "artifacts/nope"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_app({"model": "empty"})


def test_unknown_or_wrong_typed_args_name_the_key(tiny_model):
    with pytest.raises(ConfigError, match="max_batch_sise"):
        build_app({"model": str(tiny_model), "max_batch_sise": 4})
    with pytest.raises(ConfigError, match="num_cpus"):
        build_app({"model": str(tiny_model), "num_cpus": "lots"})
    with pytest.raises(ConfigError, match="model"):
        build_app({})


def test_lora_adapters_are_refused_until_supported(tiny_model):
    with pytest.raises(NotImplementedError, match="ie"):
        build_app({"model": str(tiny_model), "loras": {"ie": str(tiny_model)}})


def test_busy_port_is_reported_before_serve_starts():
    import socket

    from knowlm_ray.serve.launch import ServeStartError, _check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ServeStartError, match="cannot serve on 127.0.0.1"):
            _check_port_free("127.0.0.1", s.getsockname()[1])
