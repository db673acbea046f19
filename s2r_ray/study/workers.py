"""What every Ray worker does first: size torch's thread pool to its CPUs and pick its device."""

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
