"""A cell's successive halving for the members of packed trials (`tune.pack`): ASHA's rungs and
rule, applied by the pack itself at each rung epoch.

Tune's ASHA (`PerCellASHA`) can only stop a whole Tune trial, and a pack is one Tune trial of
several Optuna trials, so the pack decides for its members: at a rung epoch a member continues
only if ASHA would continue it arriving at the rung last, i.e. its best validation MAE is within
the best 1/reduction_factor (Ray's `_Bracket.cutoff`: a linear-interpolated percentile) of the
values the cell recorded there before the pack started, other packs included, and of its
pack-mates' values at the same rung. Ray's ASHA is as order-dependent: a trial is compared only
with those that reached the rung before it. The values of packs running beside it at the same
time are the ones a member misses; the driver records every member's rung values as the packs
report them (in the cell's journal too), so the next pack of the cell compares against all of
them, in a resumed study as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rungs:
    """A cell's rung epochs (as Ray's ASHA places them) and the values recorded at each, by
    trial (Optuna's number in the cell): recording one again changes nothing."""

    milestones: tuple[int, ...]
    reduction_factor: int
    values: dict[int, dict[int, float]] = field(default_factory=dict)

    @classmethod
    def asha(cls, max_t: int, grace_period: int, reduction_factor: int) -> Rungs:
        """The rungs of `PerCellASHA(max_t, grace_period, reduction_factor)`: grace_period x
        reduction_factor^k below max_t."""
        grace = min(grace_period, max_t)
        count = int(np.log(max_t / grace) / np.log(reduction_factor) + 1)  # as Ray counts
        return cls(tuple(grace * reduction_factor**k for k in range(count)), reduction_factor)

    def snapshot(self) -> Rungs:
        """A copy for a pack to take along (and add its own members' values to)."""
        values = {e: dict(v) for e, v in self.values.items()}
        return Rungs(self.milestones, self.reduction_factor, values)

    def record(self, epoch: int, trial: int, value: float) -> None:
        if epoch in self.milestones:
            self.values.setdefault(epoch, {})[trial] = value

    def halve(self, epoch: int, best: Mapping[int, float]) -> set[int]:
        """The trials (keys of `best`, their best validation MAE at `epoch`) that stop at this
        rung; every value is then recorded. Not a rung epoch: none stop."""
        if epoch not in self.milestones:
            return set()
        recorded = {**self.values.get(epoch, {}), **best}
        stopped = set()
        for trial, value in best.items():
            others = [v for k, v in recorded.items() if k != trial]
            if others and value > np.nanpercentile(others, 100 / self.reduction_factor):
                stopped.add(trial)
        for trial, value in best.items():
            self.record(epoch, trial, value)
        return stopped
