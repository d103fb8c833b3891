"""``knowlm serve --config FILE``: a Serve config file (``serve_configs/*.yaml``, the file
``serve run`` takes) read as ``knowlm serve``'s own options, so the file runs on the private Ray
that ``knowlm serve`` starts (``runtime.init_ray``) instead of the one ``serve run`` starts.

Read: ``proxy_location``, ``http_options`` host and port, the one application's ``args`` (``AppArgs``) and its
deployment's ``ray_actor_options`` num_cpus / num_gpus, ``num_replicas``, ``autoscaling_config``,
``max_ongoing_requests`` and ``max_queued_requests``, which win over ``args`` as they do under
``serve run``. Anything else (a second application, another ``import_path``, a Serve option
``knowlm serve`` does not set) is refused with one line that names the key, rather than dropped.
Relative paths stay as written: they resolve against the working directory, as under
``serve run``. Ray-free: nothing here starts or imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from knowlm_ray.config import ConfigError, load_yaml
from knowlm_ray.serve.options import AppArgs

# What serve/app.py and serve/launch.py serve (app.py imports Ray Serve, so not imported here;
# a test checks they agree).
IMPORT_PATH = "knowlm_ray.serve.app:build_app"
APP_NAME = "knowlm"
DEPLOYMENT_NAME = "KnowLMServer"

PROXY_LOCATIONS = ("HeadOnly", "EveryNode", "Disabled")  # ray.serve.config.ProxyLocation
_TOP_KEYS = ("proxy_location", "http_options", "applications")
_HTTP_KEYS = ("host", "port")
_APP_KEYS = ("name", "route_prefix", "import_path", "args", "deployments")
# deployment key -> AppArgs key (ray_actor_options is read apart)
_DEPLOYMENT_KEYS = {
    "num_replicas": "num_replicas",
    "autoscaling_config": "autoscaling_config",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
}
_ACTOR_KEYS = ("num_cpus", "num_gpus")


@dataclass
class ServeFile:
    """What ``knowlm serve`` takes from a Serve config file: the app's ``args`` as written
    (checked against ``AppArgs``, with the deployment's options mapped onto its keys), and the
    HTTP host / port where the file gives them."""

    path: Path
    args: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    port: int | None = None
    proxy_location: str | None = None


def _mapping(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a mapping (got {value!r})")
    return value


def _refuse_unknown(data: dict[str, Any], allowed, where: str, key: str) -> None:
    for k in data:
        if k not in allowed:
            raise ConfigError(
                f"{where}: {key}{k} is not supported by `knowlm serve --config` "
                f"(it reads {', '.join(key + a for a in allowed)}); use `serve run` for it"
            )


def read_serve_config(path: str | Path) -> ServeFile:
    """The file's options for ``knowlm serve``; a ``ConfigError`` naming the key for anything
    it cannot honour."""
    path = Path(path)
    where = str(path)
    data = load_yaml(path)
    _refuse_unknown(data, _TOP_KEYS, where, "")
    out = ServeFile(path=path)
    if "proxy_location" in data:
        if data["proxy_location"] not in PROXY_LOCATIONS:
            raise ConfigError(
                f"{where}: proxy_location is {data['proxy_location']!r}; one of {', '.join(PROXY_LOCATIONS)}"
            )
        out.proxy_location = data["proxy_location"]

    http = _mapping(data.get("http_options") or {}, where, "http_options")
    _refuse_unknown(http, _HTTP_KEYS, where, "http_options.")
    if "host" in http:
        if not isinstance(http["host"], str) or not http["host"]:
            raise ConfigError(f"{where}: http_options.host must be a host name or address (got {http['host']!r})")
        out.host = http["host"]
    if "port" in http:
        port = http["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"{where}: http_options.port must be a port number (got {port!r})")
        out.port = port

    apps = data.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ConfigError(f"{where}: applications must list the one knowlm application")
    if len(apps) > 1:
        raise ConfigError(
            f"{where}: applications lists {len(apps)} applications; `knowlm serve --config` runs one "
            "(use `serve run` for several)"
        )
    app = _mapping(apps[0], where, "applications[0]")
    _refuse_unknown(app, _APP_KEYS, where, "applications[0].")
    expected = {"import_path": IMPORT_PATH, "name": APP_NAME, "route_prefix": "/"}
    for key, want in expected.items():
        if key in app and app[key] != want:
            raise ConfigError(
                f"{where}: applications[0].{key} is {app[key]!r}; `knowlm serve --config` serves "
                f"{IMPORT_PATH} as {APP_NAME!r} at '/' (use `serve run` for another)"
            )
    if "import_path" not in app:
        raise ConfigError(f"{where}: applications[0].import_path is missing (it is {IMPORT_PATH})")
    args = dict(_mapping(app.get("args") or {}, where, "applications[0].args"))

    deployments = app.get("deployments") or []
    if not isinstance(deployments, list):
        raise ConfigError(f"{where}: applications[0].deployments must be a list")
    if len(deployments) > 1:
        raise ConfigError(f"{where}: applications[0].deployments lists {len(deployments)}; the app has one")
    for dep in deployments:
        dep = _mapping(dep, where, "applications[0].deployments[0]")
        at = "applications[0].deployments[0]."
        _refuse_unknown(dep, ("name", "ray_actor_options", *_DEPLOYMENT_KEYS), where, at)
        if dep.get("name") != DEPLOYMENT_NAME:
            raise ConfigError(f"{where}: {at}name is {dep.get('name')!r}; the app's deployment is {DEPLOYMENT_NAME}")
        actor = _mapping(dep.get("ray_actor_options") or {}, where, at + "ray_actor_options")
        _refuse_unknown(actor, _ACTOR_KEYS, where, at + "ray_actor_options.")
        args.update(actor)  # the deployment's entry wins over args, as Serve applies it
        for key, arg in _DEPLOYMENT_KEYS.items():
            if key in dep:
                args[arg] = dep[key]
        if "autoscaling_config" in dep and "num_replicas" not in dep:
            args["num_replicas"] = None  # AppArgs: a fixed count would turn it off
    try:
        AppArgs.model_validate({**args, "model": args.get("model") or "-"})  # or --model's
    except ValidationError as err:
        problems = "; ".join(
            f"applications[0].args.{'.'.join(str(p) for p in e['loc'])}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
    if args.get("model") is None:
        args.pop("model", None)  # `knowlm config show serve` writes it null: --model fills it in
    out.args = args
    return out
