"""Featurization over a Ray cluster: the chunks the data layer would give its local processes go
to Ray tasks instead, one CPU each, so every node's free CPUs work on a large table (on a GPU
cluster, the CPUs no trial holds). The data layer stays free of Ray: it sees an `Executor`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

import ray


def _run_chunk(fn: Callable[[Any], Any], chunk: Any) -> tuple[str, Any]:
    """fn(chunk) on whichever node Ray chose, and that node's id (to show who worked)."""
    return ray.get_runtime_context().get_node_id(), fn(chunk)


# SPREAD: chunks go round the nodes, not first onto the driver's until it is busy
_remote_chunk = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_run_chunk)


class RayPool(Executor):
    """`map` as Ray tasks, results in order; `rows_by_node` counts the items each node did."""

    def __init__(self) -> None:
        self.rows_by_node: Counter[str] = Counter()

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """All tasks are submitted now (as a process pool's map does); results come in order."""
        if len(iterables) != 1:
            raise TypeError("RayPool.map takes one iterable of chunks")
        chunks = list(iterables[0])
        refs = [_remote_chunk.remote(fn, chunk) for chunk in chunks]

        def results() -> Iterator[Any]:
            for chunk, ref in zip(chunks, refs, strict=True):
                node, result = ray.get(ref, timeout=timeout)
                self.rows_by_node[node] += len(chunk)
                yield result

        return results()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("RayPool runs chunks through map only")
