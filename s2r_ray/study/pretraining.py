"""The driver's account of pretraining: once per (n, repetition), as a unit of the study's one
Tune experiment (run by `s2r_ray.study.work`), in its own MLflow run.

Pretraining runs inside the study's one Tune experiment, like the trials and scoring, rather
than as Ray tasks beside it. Beside it, two schedulers shared the CPUs: after a node was lost,
a pretraining could only be placed again on CPUs that Tune's idle, cached trial actors held,
while every remaining cell waited on that pretraining, and the study hung. With one scheduler,
a pretraining lost with its node is retried like any trial (`tune.max_failures`), and its
network is in the study folder the moment it exists (`s2r_ray.study.pretrained`), so no later
loss can take it.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from s2r_ray.config import Resources
from s2r_ray.progress import Rate
from s2r_ray.protocol import Cell
from s2r_ray.study.units import Failure, PretrainingSummary


class Pretrainings:
    """The driver's account of the study's pretraining: what is on disk, running, done, failed.

    A network a previous attempt finished is on disk and never recomputed. The rest is handed
    out by the searcher, small n first, at most `slots` units at a time, so trials of the cells
    already pretrained keep the other CPUs and a slow large-n pretraining never holds them all;
    a unit may be several pretrainings of one n, trained as one network. With `borrow`, a
    slot that no trial or scoring is ready for takes the next pretraining too: otherwise it
    idles while the pretrainings, one slot after another, are the study's critical path.
    """

    def __init__(
        self,
        needed: list[str],
        on_disk: set[str],
        slots: int,
        echo: Callable[[str], None],
        borrow: bool = False,
    ):
        self.loaded = [k for k in needed if k in on_disk]
        self._todo = [k for k in needed if k not in on_disk]
        self._done, self._running = set(self.loaded), list[set[str]]()  # keys, by unit
        self.failed: dict[str, str] = {}
        self._slots, self._echo, self._borrow = slots, echo, borrow
        self._rate = Rate(len(self._todo), unit="pretrainings")

    def add(self, key: str) -> None:
        """A pretraining a steering decision asks for (nothing if it exists or is under way)."""
        if key not in self._done | set().union(*self._running) and key not in self._todo:
            self._todo.append(key)
            self._rate.total += 1

    def next(
        self, most: int = 1, alike: Callable[[str], object] = str, idle: bool = False
    ) -> list[str]:
        """The next pretrainings to start as one unit, if a slot is free (or, `idle`, one that
        nothing else is ready for may be borrowed): the first waiting and up to `most` - 1 more
        waiting that are `alike` it (of one n: they train as one)."""
        free = len(self._running) < self._slots or (idle and self._borrow)
        if not self._todo or not free:
            return []
        first = alike(self._todo[0])
        keys = [k for k in self._todo if alike(k) == first][:most]
        self._todo = [k for k in self._todo if k not in keys]
        self._running.append(set(keys))
        return keys

    def ended(self, key: str, outcome: PretrainingSummary | Failure) -> None:
        """A pretraining ended: with its summary, or failed (it raised, or Tune gave up)."""
        for unit in self._running:
            unit.discard(key)
        self._running = [unit for unit in self._running if unit]
        self._done.add(key)
        if isinstance(outcome, Failure):
            self.failed[key] = outcome.error
            line = f"pretraining {key} FAILED: {outcome.error}"
        else:
            how = (
                "converged" if outcome.converged else "stopped on the step cap (pretrain.max_steps)"
            )
            line = (
                f"pretraining {key}: source hold-out MAE {outcome.source_val_mae:.4g} after "
                f"{outcome.steps} steps, {how} ({outcome.seconds:.0f} s)"
            )
        self._rate.add()
        self._echo(f"{line} | {self._rate.done}/{self._rate.total}, {self._rate.describe()}")

    def ready(self, cell: Cell) -> bool:
        """Whether the cell's trials can start."""
        return cell.is_baseline or (cell.pretrain_id in self._done and not self.error(cell))

    def error(self, cell: Cell) -> str | None:
        return None if cell.is_baseline else self.failed.get(cell.pretrain_id)


def default_slots(res: Resources) -> int:
    """Half the cluster's CPUs, and no more pretrainings than its GPUs can hold."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 1) // (2 * res.cpu))
    if res.gpu:
        slots = min(slots, int(total.get("GPU", 0) // res.gpu))
    return max(1, slots)
