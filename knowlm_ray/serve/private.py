"""A replica on a private Ray stays private: Serve starts an inter-deployment gRPC server in
every replica and binds it to every interface (``"[::]:0"``, written into Serve), while every
other port of the Ray that ``runtime.init_ray`` starts listens on loopback only."""

from __future__ import annotations

LOOPBACK = "127.0.0.1"


def loopback_address(address: str) -> str:
    """``[::]:PORT`` (or ``0.0.0.0:PORT``) as ``127.0.0.1:PORT``; any other address unchanged."""
    host, _, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if host in ("[::]", "0.0.0.0", "") else address


def keep_replica_on_loopback() -> bool:
    """Call in the replica (the deployment's constructor, before Serve starts that server). On a
    node whose address is 127.0.0.1 (a private Ray), the server binds loopback; on a cluster's
    node nothing changes. Returns whether it applies. Serve's internals: where a Ray version
    moves them, nothing is changed (the server is still token-protected)."""
    try:
        import ray
        from ray.serve._private import replica
    except ImportError:
        return False
    add = getattr(replica, "add_port_to_grpc_server", None)
    if add is None or not ray.is_initialized() or ray.util.get_node_ip_address() != LOOPBACK:
        return False
    if getattr(add, "knowlm_loopback", False):
        return True

    def add_on_loopback(server, address):
        return add(server, loopback_address(address))

    add_on_loopback.knowlm_loopback = True
    replica.add_port_to_grpc_server = add_on_loopback
    return True
