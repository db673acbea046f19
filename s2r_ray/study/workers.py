"""What every Ray worker does first: size torch's thread pool to its CPUs and pick its device;
and workers warmed before the study's Tune experiment starts."""

from __future__ import annotations

import math
import warnings

import ray
import torch


def setup_worker(cpus: float) -> str:
    """One thread per reserved CPU (trials share nodes); CUDA only when Ray granted a GPU."""
    torch.set_num_threads(max(1, math.floor(cpus)))
    if not ray.get_gpu_ids():
        return "cpu"
    if not torch.cuda.is_available():
        warnings.warn(
            "Ray granted this worker a GPU but torch has no CUDA (a CPU build of torch?): "
            "training on the CPU",
            stacklevel=2,
        )
        return "cpu"
    return "cuda"


def ray_node() -> str:
    """The Ray node this runs on, in each run's params: which runs a lost node took with it."""
    return ray.get_runtime_context().get_node_id()


@ray.remote
def _import_units() -> None:
    import s2r_ray.study.work  # noqa: F401  (torch, MLflow, Tune: ~3 s of imports)


def warm(count: int) -> None:
    """Start `count` worker processes on the imports a unit needs, while the driver opens its
    MLflow runs, so that Tune's trial actors start on warm workers. Tune hands a pending unit to
    the first actor that frees up and kills the one still starting for it (`TuneController.
    _maybe_reuse_cached_actor`): with units shorter than a cold actor start, a study ran on one
    actor (the demo's first 35 s used one of its two CPUs)."""
    task = _import_units.options(num_cpus=1, scheduling_strategy="SPREAD")
    for _ in range(count):
        task.remote()  # not awaited: a unit on a worker still cold only starts slower
