"""serve_configs/*.yaml against Ray Serve's own schema, and build_app's argument handling (no Ray)."""

from __future__ import annotations

import importlib

import pytest
import yaml
from pydantic import ValidationError

from knowlm_ray.config import ConfigError
from knowlm_ray.serve.app import DEPLOYMENT_NAME, build_app, resolve_model_dir
from knowlm_ray.serve.options import AppArgs


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


def test_lora_dirs_resolve_and_must_be_peft_dirs(tiny_model, lora_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(lora_dirs["ie"].parent)
    assert build_app({"model": str(tiny_model), "loras": {"ie": "ie"}, "num_replicas": 1}) is not None
    (tmp_path / "notpeft").mkdir()
    with pytest.raises(FileNotFoundError, match="'bad'.*adapter_config.json"):
        build_app({"model": str(tiny_model), "loras": {"bad": str(tmp_path / "notpeft")}})
    with pytest.raises(ConfigError, match="adapter name"):
        build_app({"model": str(tiny_model), "loras": {"../x": str(lora_dirs["ie"])}})
    with pytest.raises(ConfigError, match="base model's id"):
        build_app({"model": str(tiny_model), "loras": {tiny_model.name: str(lora_dirs["ie"])}})


def test_prompt_format_per_model_and_per_adapter(tiny_model, lora_dirs):
    """``prompt_format`` for the model; ``loras`` entries are a directory (the model's format) or
    ``{path, prompt_format}``; a wrong name is a config error naming the key."""
    ie = str(lora_dirs["ie"])
    cfg = AppArgs.model_validate(
        {"model": "m", "prompt_format": "zhixi", "loras": {"a": ie, "b": {"path": ie, "prompt_format": "oneke"}}}
    )
    assert cfg.lora_dirs() == {"a": ie, "b": ie}
    assert cfg.lora_prompt_formats() == {"a": "zhixi", "b": "oneke"}
    assert AppArgs.model_validate({"model": "m"}).prompt_format == "alpaca"
    assert build_app({"model": str(tiny_model), "loras": {"b": {"path": ie, "prompt_format": "oneke"}}}) is not None
    with pytest.raises(ConfigError, match="prompt_format"):
        build_app({"model": str(tiny_model), "prompt_format": "llama9"})
    with pytest.raises(ConfigError, match="prompt_format"):
        build_app({"model": str(tiny_model), "loras": {"b": {"path": ie, "prompt_format": "llama9"}}})


@pytest.mark.parametrize(
    "args, match",
    [
        ({"dtype": "float16"}, "float16 needs a GPU"),
        ({"dtype": "float16", "device": "cpu", "num_gpus": 1}, "float16 needs a GPU"),
        ({"device": "cuda"}, "device cuda needs num_gpus"),
        ({"quantization": "int8", "dtype": "bfloat16"}, "set dtype float32"),
        ({"quantization": "int8", "loras": {"ie": "x"}}, "LoRA adapters"),
        ({"quantization": "int4"}, "quantization"),
        ({"max_memory": {0: "10GiB"}, "num_gpus": 1}, "max_memory needs device_map"),
        ({"device_map": "auto", "max_memory": {0: "10GiB", 2: "10GiB"}, "num_gpus": 2}, "names GPU 2"),
        ({"device_map": "auto", "max_memory": {"gpu0": "10GiB"}, "num_gpus": 1}, "GPU index"),
        ({"device_map": "auto", "max_memory": {0: "ten gigs"}, "num_gpus": 1}, "size like"),
        ({"device_map": "everywhere"}, "device_map"),
        ({"max_waiting_requests": 0}, "max_waiting_requests"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"trust_remote_code": "yes"}, "trust_remote_code"),
    ],
)
def test_engine_and_device_args_are_checked_up_front(args, match):
    with pytest.raises(ValidationError, match=match):
        AppArgs.model_validate({"model": "m", **args})


def test_multi_gpu_args_normalise():
    cfg = AppArgs.model_validate(
        {
            "model": "m",
            "num_gpus": 2,
            "device_map": "auto",
            "dtype": "float16",
            "max_memory": {"0": "18GiB", 1: "18 GiB", "cpu": 2**34},
        }
    )
    assert cfg.max_memory == {0: "18GiB", 1: "18 GiB", "cpu": 2**34}
    assert not AppArgs.model_validate({"model": "m"}).trust_remote_code  # only when asked for


def test_deployment_options_carry_gpus_and_backpressure():
    from knowlm_ray.serve.app import deployment_options

    opts = deployment_options(
        AppArgs.model_validate(
            {"model": "m", "num_gpus": 2, "max_queued_requests": 5, "retry_after_s": 3, "num_replicas": 1}
        )
    )
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 2}
    assert opts["max_queued_requests"] == 5 and opts["backpressure_config"].retry_after_s == 3
    assert opts["num_replicas"] == 1 and opts["autoscaling_config"] is None


def test_api_key_comes_from_the_environment(tiny_model, monkeypatch):
    monkeypatch.setenv("KNOWLM_API_KEY", "s3cret")
    app = build_app({"model": str(tiny_model), "num_replicas": 1})
    assert app._bound_deployment.init_kwargs["api_key"] == "s3cret"


def test_busy_port_is_reported_before_serve_starts():
    import socket

    from knowlm_ray.serve.launch import ServeStartError, _check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ServeStartError, match="cannot serve on 127.0.0.1"):
            _check_port_free("127.0.0.1", s.getsockname()[1])


def _configs(repo_root):
    return sorted((repo_root / "serve_configs").glob("*.yaml"))


def test_every_serve_config_validates_with_serve_and_our_args(repo_root):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    names = [p.name for p in _configs(repo_root)]
    assert {"tiny.yaml", "zhixi.yaml", "zhixi-multigpu.yaml"} <= set(names)
    for path in _configs(repo_root):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg = ServeDeploySchema.model_validate(raw)
        assert cfg.http_options.host == "127.0.0.1", path.name  # never every interface by default
        for app_raw, app in zip(raw["applications"], cfg.applications):
            module, attr = app.import_path.split(":")
            assert callable(getattr(importlib.import_module(module), attr)), path.name
            args = AppArgs.model_validate(app_raw["args"])
            for dep in app.deployments:
                assert dep.name == DEPLOYMENT_NAME, path.name
                auto = AutoscalingConfig.model_validate(dep.autoscaling_config)
                assert 1 <= auto.min_replicas <= auto.max_replicas, path.name
                # the deployment override and the args must agree on GPUs per replica
                assert (dep.ray_actor_options.num_gpus or 0) == args.num_gpus, path.name


def test_zhixi_configs_say_what_the_recipe_needs(repo_root):
    z = AppArgs.model_validate(
        yaml.safe_load((repo_root / "serve_configs/zhixi.yaml").read_text())["applications"][0]["args"]
    )
    assert (z.quantization, z.num_gpus, z.device) == ("int8", 1, "cuda")
    m = AppArgs.model_validate(
        yaml.safe_load((repo_root / "serve_configs/zhixi-multigpu.yaml").read_text())["applications"][0]["args"]
    )
    assert (m.dtype, m.num_gpus, m.device_map, sorted(m.max_memory)) == ("float16", 2, "auto", [0, 1])


def test_prefill_budget_default_is_the_batchers_and_reaches_the_replica(tiny_model):
    """options.py states the batcher's default as a literal (it loads without torch): the two
    must agree, and the key must reach the replica's constructor."""
    from knowlm_ray.generation.continuous import DEFAULT_MAX_PREFILL_TOKENS

    assert AppArgs(model=str(tiny_model)).max_prefill_tokens == DEFAULT_MAX_PREFILL_TOKENS
    with pytest.raises(ValidationError, match="max_prefill_tokens"):
        AppArgs(model=str(tiny_model), max_prefill_tokens=0)
    for value in (7, None):
        app = build_app({"model": str(tiny_model), "max_prefill_tokens": value})
        assert app._bound_deployment.init_kwargs["max_prefill_tokens"] == value
