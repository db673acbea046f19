"""What a study used besides time: the shared copy of its data in the object store, and the
peak memory of the driver and of its largest worker, so a large database's cost is on record
(report.json `timing`, the MLflow study run) and not guessed from the next out-of-memory kill.
"""

from __future__ import annotations

import threading

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from s2r_ray.protocol import Plan

MIB = 1 << 20


def share_plan(plan: Plan) -> ray.ObjectRef:
    """Put the plan into the object store once and have this process read the stored copy: every
    job maps the same pages zero-copy, and the driver drops its own copy of the source pool
    (10^7 x 64 float32 rows are 2.4 GiB). The arrays become read-only, as they are in jobs."""
    ref = ray.put(plan)
    stored = ray.get(ref).dataset
    ds = plan.dataset
    for name in ("source_X", "source_y", "source_ids", "target_X", "target_y", "target_ids"):
        setattr(ds, name, getattr(stored, name))
    return ref


def stored_bytes(ref: ray.ObjectRef) -> int | None:
    """Size of an object in the object store (None where Ray does not say)."""
    try:
        return int(ray.experimental.get_object_locations([ref])[ref]["object_size"])
    except Exception:  # an older Ray or an object already gone: the figure is optional
        return None


class _Peaks:
    """Every `interval` seconds in a thread, the resident memory of `root` and of each job
    process (`ray::`) below it, keeping the peaks. A job's private memory (USS) is sampled too:
    pages it maps from the object store are in its RSS, shared."""

    def __init__(self, root: psutil.Process, interval: float) -> None:
        self.root, self.interval = root, interval
        self.root_rss = self.worker_rss = self.worker_private = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self.root_rss = max(self.root_rss, self.root.memory_info().rss)
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                name = p.name()  # raylet, GCS, agents: not a job's memory; nor a sampler's
                if not name.startswith("ray::") or NodeSampler.__name__ in name:
                    continue
                info = p.memory_full_info()
            except psutil.Error:  # ended between listing and reading
                continue
            self.worker_rss = max(self.worker_rss, info.rss)
            self.worker_private = max(self.worker_private, info.uss)


class NodeSampler:
    """A Ray actor on one node of a cluster keeping the peaks of the jobs its raylet (this
    actor's parent process) runs: workers of other nodes are no processes of the driver's."""

    def __init__(self, interval: float = 0.5) -> None:
        raylet = psutil.Process().parent()
        assert raylet is not None  # an actor's worker process is its raylet's child
        self._peaks = _Peaks(raylet, interval)
        self._peaks.start()

    def peaks(self) -> tuple[int, int]:
        """Peak RSS and peak private memory of one job process of this node so far."""
        self._peaks.sample()
        return self._peaks.worker_rss, self._peaks.worker_private


class MemorySampler:
    """Peak memory of this process (the driver) and of its largest job process: those below it
    (a local Ray's raylet and workers) and, once `watch_nodes` ran, those of every cluster node."""

    def __init__(self, interval: float = 0.5) -> None:
        self._peaks = _Peaks(psutil.Process(), interval)
        self._nodes: list[ray.actor.ActorHandle] = []

    def __enter__(self) -> MemorySampler:
        self._peaks.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._peaks.stop()

    def watch_nodes(self) -> None:
        """One `NodeSampler` on each node alive now (a node that joins later is not watched)."""
        actor = ray.remote(num_cpus=0)(NodeSampler)
        for node in ray.nodes():
            if node["Alive"]:
                here = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                self._nodes.append(actor.options(scheduling_strategy=here).remote())

    def figures(self) -> dict[str, float]:
        rss, private = self._peaks.worker_rss, self._peaks.worker_private
        if self._nodes and ray.is_initialized():
            for node_rss, node_private in ray.get([n.peaks.remote() for n in self._nodes]):
                rss, private = max(rss, node_rss), max(private, node_private)
        return {
            "driver_peak_rss_mib": round(self._peaks.root_rss / MIB),
            "worker_peak_rss_mib": round(rss / MIB),
            "worker_peak_private_mib": round(private / MIB),
        }
