"""cluster/*.yaml pass Ray's own cluster-config validation (offline: no cloud calls, no SSH)."""

from __future__ import annotations

import copy

import pytest
import yaml

CLUSTERS = ("v100", "local")


def load(repo_root, name: str) -> dict:
    return yaml.safe_load((repo_root / "cluster" / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", CLUSTERS)
def test_ray_validates_the_cluster_config(repo_root, name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(repo_root, name)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert any("make setup" in cmd for cmd in config["setup_commands"]), config["setup_commands"]
    # torch pinned to a CUDA 12.6 build: the newest that still ships sm_70 (V100) kernels
    assert any("torch==2.13.0" in cmd and "whl/cu126" in cmd for cmd in config["setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    # Ray's token auth on every node, the token copied to each (the laptop's ~/.ray/auth_token)
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "RAY_AUTH_MODE=disabled" not in (repo_root / "cluster" / f"{name}.yaml").read_text()
    assert any(remote.endswith(".ray/auth_token") for remote in config["file_mounts"]), config["file_mounts"]


def test_v100_is_three_p3dn_nodes_with_ray_pinned(repo_root):
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(load(repo_root, "v100"))
    types = config["available_node_types"]
    head, worker = types[config["head_node_type"]], types["v100.worker"]
    assert head["node_config"]["InstanceType"] == worker["node_config"]["InstanceType"] == "p3dn.24xlarge"
    assert worker["min_workers"] == worker["max_workers"] == 2 and config["max_workers"] == 2  # 1 + 2 nodes
    import ray

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert config["docker"]["image"].endswith("-gpu")
    assert "/fsx:/fsx" in " ".join(config["docker"]["run_options"])  # shared storage in the container
    # a named security group: Ray opens SSH and the cluster's own traffic, nothing to the world here
    group = config["provider"]["security_group"]
    assert group["GroupName"] and all(
        r.get("CidrIp") != "0.0.0.0/0" for rule in group["IpPermissions"] for r in rule.get("IpRanges", [])
    )


def test_local_provider_takes_the_worker_ips(repo_root):
    from ray.autoscaler._private.util import prepare_config

    raw = load(repo_root, "local")
    config = prepare_config(copy.deepcopy(raw))
    assert config["provider"]["type"] == "local"
    assert config["max_workers"] == len(raw["provider"]["worker_ips"]) == 2  # Ray counts the IPs
