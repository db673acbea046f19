"""What a study used besides time: the shared copy of its data in the object store, and the
peak memory of the driver and of its largest worker, so a large database's cost is on record
(report.json `timing`, the MLflow study run) and not guessed from the next out-of-memory kill.
"""

from __future__ import annotations

import threading

import psutil
import ray

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


class MemorySampler:
    """Samples, every `interval` seconds in a thread, the resident memory of this process and of
    each process below it (on a local Ray: raylet, workers), keeping the peaks. A worker's private
    memory (USS) is sampled too: pages it maps from the object store are in its RSS, shared."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.driver_rss = 0
        self.worker_rss = 0
        self.worker_private = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self.driver_rss = max(self.driver_rss, self._me.memory_info().rss)
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                if not p.name().startswith("ray::"):  # raylet, GCS, agents: not a job's memory
                    continue
                info = p.memory_full_info()
            except psutil.Error:  # ended between listing and reading
                continue
            self.worker_rss = max(self.worker_rss, info.rss)
            self.worker_private = max(self.worker_private, info.uss)

    def figures(self) -> dict[str, float]:
        return {
            "driver_peak_rss_mib": round(self.driver_rss / MIB),
            "worker_peak_rss_mib": round(self.worker_rss / MIB),
            "worker_peak_private_mib": round(self.worker_private / MIB),
        }
