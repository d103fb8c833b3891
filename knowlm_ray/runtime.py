"""Process-wide defaults and a Ray start-up that works both on a laptop and attached to a cluster.

A Ray that ``init_ray`` starts for this process is private: Ray's token authentication stays on
(every Ray API refuses a client without the token from ``~/.ray/auth_token``) and every Ray port
listens on loopback only. Attached to a cluster (``RAY_ADDRESS``, or a ``ray start`` running on
this machine, as ``ray.init()`` and ``serve run`` find it), the cluster's own settings stand;
``RAY_ADDRESS=local`` always starts a private Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

# Defaults for a quiet, offline run: no progress bars or print patching in workers, no Hugging
# Face hub access, and a faster Ray Train poll. setdefault: a user's own environment always wins.
QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # ray.train.report waits one poll: 2 s -> 0.2 s
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def set_default_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "DS_ACCELERATOR" not in os.environ and shutil.which("nvidia-smi") is None:
        os.environ["DS_ACCELERATOR"] = "cpu"


def worker_env() -> dict[str, str]:
    """Environment every Ray worker gets (runtime_env env_vars)."""
    set_default_env()
    keys = list(QUIET_ENV) + ["DS_ACCELERATOR", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR"]
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Ray's own switch for macOS and Windows laptops: off, the node's address is 127.0.0.1, and then
# the GCS, raylet, workers and agents listen on loopback only. Ray rewrites an explicit
# ``_node_ip_address="127.0.0.1"`` to the machine's routable address, so that does not do it.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def private_ray_env() -> None:
    """Set up this process so that the Ray it is about to start is private: token auth on (unless
    ``RAY_AUTH_MODE`` says otherwise) and every port on loopback. Only for a Ray started here."""
    if AUTH_MODE_ENV not in os.environ:
        os.environ[AUTH_MODE_ENV] = "token"
        try:  # Ray's core caches its config when ray is imported: read the mode again
            import ray
            from ray._raylet import Config

            if not ray.is_initialized():
                Config.initialize("")
        except (ImportError, AttributeError):
            pass
    os.environ[LOOPBACK_ENV] = "0"
    try:  # Ray reads the switch when it is imported, which may have happened already
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):
        pass


def local_cluster_address() -> str | None:
    """The GCS address of a Ray that ``ray start`` runs on this machine, found the way
    ``ray.init()`` finds it (the ``ray_current_cluster`` file in Ray's temp dir, which
    ``ray start`` writes and ``ray stop`` removes), if a raylet of it still runs here; None
    otherwise (a file left by a Ray that was killed names nothing). Ray's internals: where a Ray
    version moves them, None."""
    try:
        from ray._private import services
    except ImportError:
        return None
    try:
        address = services.find_bootstrap_address(None)
        if not address:
            return None
        services.find_gcs_addresses.cache_clear()
        return address if address in services.find_gcs_addresses() else None
    except (AttributeError, OSError):
        return None


def cluster_address() -> str | None:
    """Where ``init_ray`` will attach: ``RAY_ADDRESS`` (unless it is ``local``), else a running
    ``ray start`` on this machine; None: it starts a private Ray."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address == "local":
        return None
    return address or local_cluster_address()


def init_ray(num_cpus: int | None = None, object_store_mb: int = 512):
    """Start or attach to Ray. Attached (``cluster_address``), no resources may be passed and the
    cluster's settings stand. A Ray started here is private (``private_ray_env``).

    Without ``RAY_ADDRESS``, plain ``ray.init()`` attaches by itself to a ``ray start`` on this
    machine and then refuses ``num_cpus``: that case attaches here too, as ``serve run`` does,
    and says so in one line (``RAY_ADDRESS=local`` for a private Ray beside it)."""
    set_default_env()
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": worker_env()}
    if os.environ.get("RAY_ADDRESS", "") not in ("", "local"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    elif (local := cluster_address()) is not None:
        print(
            f"[knowlm] attaching to the Ray that `ray start` runs on this machine ({local}): its resources "
            "and settings apply; RAY_ADDRESS=local starts a private Ray instead",
            file=sys.stderr,
            flush=True,
        )
        ray.init(address=local, runtime_env=runtime_env, log_to_driver=True)
    else:
        private_ray_env()
        ray.init(
            address="local",  # never the ray_current_cluster file's address: checked above
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            object_store_memory=object_store_mb * 2**20,
            runtime_env=runtime_env,
        )
    return ray


def start_data_actors() -> None:
    """Start Ray Data's two actors (execution stats, autoscaling coordinator) now, so their
    processes start while the driver plans, not at the first execution (~1.5 s each here). Until
    the coordinator first answers, an execution runs one task at a time (its resource limits come
    from it): measured at 2 CPUs, the second worker's first task waited 2 s. Both are named, one
    per cluster, and created by the same calls Ray Data makes (``get_if_exists``). Ray Data's
    internals: where a Ray version moves them, nothing is started early, nothing else changes."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return
    get_or_create_stats_actor()
    get_or_create_autoscaling_coordinator()


class _BusyCpuWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


def quiet_busy_cpu_warning() -> None:
    """Drop Ray Data's "no available CPUs ... the Dataset job will hang" warning from now on. Call
    it once this job's own tasks may hold the CPUs when an execution starts (they end; nothing
    hangs). Before that, on a cluster whose CPUs other work holds, the warning is left to be seen."""
    logger = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _BusyCpuWarning) for f in logger.filters):
        logger.addFilter(_BusyCpuWarning())


def map_refs(fn, refs: list, *args) -> list:
    """``fn(block, *args)`` for every object ref, as plain Ray tasks (a Ray Data execution costs
    seconds more for the same small job). One CPU each, not zero: zero-CPU tasks may run beyond
    the worker pool and start new worker processes (measured here: 10 tiny tasks 2-5 s with
    num_cpus=0 until enough workers existed, 0.05 s with num_cpus=1 on the pool's workers)."""
    import ray

    task = ray.remote(fn)
    return ray.get([task.remote(ref, *args) for ref in refs])
