"""A Ray cluster of several nodes on this machine, every node on 127.0.0.1 (tests, benchmarks).

`ray.init` turns a loopback address into the machine's own before connecting (Ray's
`resolve_ip_for_localhost`), where nodes bound to loopback do not answer; the driver of such a
one-machine cluster keeps the address as given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"


@contextmanager
def loopback_cluster(nodes: int, cpus: int) -> Iterator[object]:
    """`nodes` Ray nodes of `cpus` CPUs each, this process connected as the driver."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray._private.services as services
    from ray.cluster_utils import Cluster

    services.resolve_ip_for_localhost = lambda host: host
    node = {"num_cpus": cpus, "node_ip_address": LOOPBACK, "object_store_memory": 512 << 20}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    ray.init(address=cluster.address, _node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
