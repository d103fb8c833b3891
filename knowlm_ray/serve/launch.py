"""Start and stop the Serve app from Python: ``start``/``stop`` (demo, tests), ``serve_blocking`` (CLI)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

from knowlm_ray.serve.app import APP_NAME, build_app

READY_TIMEOUT_S = 180.0  # a cold 2-core box needs ~15 s; a 13B model loads for minutes


class ServeStartError(RuntimeError):
    pass


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _app_failure() -> str | None:
    """The deploy error Serve recorded for our app, if it failed (e.g. the model would not load)."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return None
    if app is not None and str(app.status).endswith("DEPLOY_FAILED"):
        return app.message or "deployment failed"
    return None


def _serve_http_address() -> tuple[str, int] | None:
    """(host, port) of the Serve already running in this Ray, or None if none is."""
    try:
        from ray.serve.context import _get_global_client  # private, so guarded

        client = _get_global_client(raise_if_no_controller_running=False)
        return None if client is None else (client.http_config.host, client.http_config.port)
    except Exception:
        return None


def _check_port_free(host: str, port: int) -> None:
    """Serve's proxy only logs a failed bind; say it up front instead of timing out."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeStartError(f"cannot serve on {host}:{port}: {exc.strerror}; pick another --port") from None


def wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``/healthz`` until it answers 200; raise with Serve's own message if the app failed."""
    import requests

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{base_url}/healthz", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        failure = _app_failure()
        if failure:
            raise ServeStartError(f"Serve app {APP_NAME!r} failed to deploy: {failure}")
        time.sleep(0.2)
    raise ServeStartError(f"{base_url}/healthz not ready after {timeout_s:.0f}s (last: {last})")


def start(
    model: str,
    loras: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    proxy_location: str | None = None,
    **app_args: Any,
) -> str:
    """Deploy the app in this process's Ray (initialised if needed); returns the base URL.

    ``app_args`` are further ``AppArgs`` (e.g. ``num_replicas=1``, ``max_batch_size``).
    Serve keeps the HTTP host/port of its first start: stop() first to move it.
    ``proxy_location``: Serve's (HeadOnly, EveryNode, Disabled); None: Serve's default.
    """
    from ray import serve

    from knowlm_ray.runtime import init_ray

    app = build_app({"model": model, "loras": dict(loras or {}), **app_args})  # bad path: fail fast
    init_ray()
    running = _serve_http_address()
    if running is None:
        _check_port_free(host, port)
    elif running != (host, port):
        raise ServeStartError(
            f"Serve already runs in this Ray on {running[0]}:{running[1]}, not "
            f"{host}:{port}: call launch.stop() first or use that address"
        )
    serve.start(
        http_options={"host": host, "port": port}, **({"proxy_location": proxy_location} if proxy_location else {})
    )
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # serve.run raises when the deployment fails (e.g. constructor)
        raise ServeStartError(f"Serve app {APP_NAME!r} failed to deploy: {exc}") from exc
    base_url = f"http://{_probe_host(host)}:{port}"
    wait_ready(base_url, timeout_s)
    return base_url


def stop(shutdown_serve: bool = True) -> None:
    """Delete the app and shut Serve down (frees the HTTP port); Ray itself stays up. With
    ``shutdown_serve=False`` only the app goes: a Serve that ran before, with its other apps, stays."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
    except Exception:
        pass
    if shutdown_serve:
        serve.shutdown()


def serve_blocking(
    model: str,
    loras: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ingress: str | None = None,
    proxy_location: str | None = None,
    **app_args: Any,
) -> None:
    """``knowlm serve``: serve until SIGINT/SIGTERM, then shut Serve (and our Ray) down.

    ``ingress`` (proxy | haproxy; None: what the environment says) is set up for the Ray this
    starts (see ``ingress.py``; HAProxy's stats and metrics ports on loopback). The Ray started
    here is private (``runtime.init_ray``: token auth, every port on loopback); ``host`` is where
    HTTP listens. ``app_args`` are further ``AppArgs``; an API key comes from ``$KNOWLM_API_KEY``.
    """
    import ray

    from knowlm_ray.runtime import init_ray
    from knowlm_ray.serve.ingress import current_ingress, use_ingress

    build_app({"model": model, "loras": dict(loras or {}), **app_args})  # a bad option fails before Ray starts
    use_ingress(ingress or current_ingress())
    owns_ray = not ray.is_initialized()
    init_ray()
    # Attached to a running Ray (RAY_ADDRESS, a `ray start` here) whose Serve runs already, with
    # apps of its own maybe: at the end only our app goes, not that Serve.
    owns_serve = _serve_http_address() is None
    # After ray.init: Ray's core installs a SIGTERM handler that dumps a stack and aborts the
    # process; ours replaces it so SIGTERM (and Ctrl-C) end in a clean shutdown, exit code 0.
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        t0 = time.perf_counter()
        url = start(model, loras, host=host, port=port, proxy_location=proxy_location, **app_args)
        adapters = f"; adapters: {', '.join(sorted(loras))}" if loras else ""
        print(
            f"serving {model} at {url} (POST /generate, /v1/completions, /v1/chat/completions; "
            f"GET /v1/models, /healthz){adapters}; ingress {current_ingress()}; "
            f"ready in {time.perf_counter() - t0:.1f}s; Ctrl-C to stop",
            flush=True,
        )
        while not done.wait(1.0):  # wait with a timeout so signals are handled promptly
            pass
        print("shutting down ...", flush=True)
    finally:
        try:
            stop(shutdown_serve=owns_serve)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if owns_ray:
                ray.shutdown()
