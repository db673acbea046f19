"""The study's units of work and their typed results, and the one place that turns a unit into
a Tune config and a Tune result back into a typed result.

Four kinds of unit share the study's one Tune experiment: a `Pretraining` of an (n, r) pair
(or of several pairs of one n, trained as one network), a fine-tuning `Trial` of a cell (or a
`Pack` of several), and the `Scoring` of a cell whose trials have all ended. Only trials report
the scheduler's metric, at their rung epochs and once more as they end (`EPOCH`, `ENDED`); a
pack reports its members' ends (`PackProgress`) as they happen, the other two once, each its
typed result under `RESULT`; none of these enter an ASHA bracket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from s2r_ray.protocol import Cell
from s2r_ray.study.halving import Rungs

METRIC = "best_val_mae"  # a trial's best validation MAE so far: the scheduler's one metric
EPOCH = "epoch"  # the epoch a trial reported at: the scheduler's time (a trial skips epochs)
ENDED = "ended"  # on a trial's last report: its end, told to Optuna before its run ends
RESULT = "s2r_result"  # a pretraining's or scoring's one result


@dataclass(frozen=True)
class Pretraining:
    """Pretrain once per (n, r); every m and every trial of the pair share the network. Pairs
    of one n may train together (`tune.pretrain_pack`): one network each, one Tune trial."""

    pairs: tuple[Cell, ...]

    @property
    def cell(self) -> Cell:
        return self.pairs[0]

    @property
    def keys(self) -> list[str]:
        return [c.pretrain_id for c in self.pairs]


@dataclass(frozen=True)
class Trial:
    """One fine-tuning configuration of a cell: Optuna trial `number` of the cell's study."""

    cell: Cell
    number: int
    seed: int
    hp: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.cell.id}-t{self.number:02d}"


@dataclass(frozen=True)
class Pack:
    """Fine-tuning trials trained as one network (`tune.pack`): of one cell, or of the cells
    that share its n and m (its repetitions: as many rows, each member on its own cell's rows
    from its own pretrained start). Each member is still its own Optuna trial, MLflow run and
    stop: `rungs` holds each cell's successive halving (by cell id) as recorded when the pack
    was handed out (`s2r_ray.study.halving`)."""

    trials: tuple[Trial, ...]
    rungs: dict[str, Rungs]

    @property
    def cell(self) -> Cell:
        return self.trials[0].cell

    @property
    def key(self) -> str:
        return f"{self.trials[0].key}-pack{len(self.trials)}"


@dataclass(frozen=True)
class MemberEnd:
    """A pack member's end (by trial key), as `CellTuner.tell` takes it: its best validation
    MAE (`stopped` before its last epoch, or not), or None with the `error` that ended it
    (diverged)."""

    key: str
    value: float | None = None
    stop_epoch: int = 0
    train_seconds: float = 0.0
    error: str | None = None
    stopped: bool = False


def run_status(stopped: bool, failed: bool = False) -> str:
    """How an ended trial's MLflow run ends: KILLED when stopped early, as ASHA's stops end."""
    return "FAILED" if failed else "KILLED" if stopped else "FINISHED"


@dataclass(frozen=True)
class PackProgress:
    """What a pack reports after a round: the members that ended in it, and the values its
    members recorded at a rung (trial key, epoch, best validation MAE) for their cells' later
    packs."""

    ended: tuple[MemberEnd, ...]
    rung_values: tuple[tuple[str, int, float], ...] = ()


@dataclass(frozen=True)
class Scoring:
    """Rebuild the cell's selected trial and evaluate it once on test. `stop_epoch` None replays
    every epoch (a trial that reported none was never stopped early)."""

    trial: Trial
    stop_epoch: int | None
    selection_val_mae: float

    @property
    def cell(self) -> Cell:
        return self.trial.cell

    @property
    def key(self) -> str:
        return f"{self.cell.id}-score"


Unit = Pretraining | Trial | Pack | Scoring


@dataclass
class KeptNetwork:
    """A trial's own network, kept so that scoring need not train it again: its best state at
    each new best of its last `WINDOW` epochs (ASHA may stop it an epoch or two before the
    training thread learns of it) and the last epoch it reached. A pack member keeps its `end`
    with it: a pack that Tune runs again (its process or node was lost) trains only the
    members that have none and reports the others' ends again."""

    WINDOW = 4
    bests: list[tuple[int, float, Any]]  # (epoch, best val MAE, state for Family.load)
    reached: int = 0
    end: MemberEnd | None = None

    def add(self, epoch: int, best: float, state: Any) -> None:
        self.bests.append((epoch, best, state))

    def trimmed(self) -> KeptNetwork:
        """What scoring can need: the bests from the last one at or before reached - WINDOW."""
        older = [i for i, (e, _, _) in enumerate(self.bests) if e <= self.reached - self.WINDOW]
        return KeptNetwork(self.bests[older[-1] if older else 0 :], self.reached, self.end)

    def at(self, stop_epoch: int | None) -> tuple[Any, float] | None:
        """(state, best val MAE) of the network a replay to `stop_epoch` would rebuild; None
        when it was not kept (the trial never got there, or it is older than the window)."""
        if stop_epoch is None or stop_epoch > self.reached:
            return None
        before = [(e, val, state) for e, val, state in self.bests if e <= stop_epoch]
        return (before[-1][2], before[-1][1]) if before else None


@dataclass(frozen=True)
class PretrainingSummary:
    """What the driver learns of a finished pretraining (its network is in the store)."""

    source_val_mae: float
    steps: int
    converged: bool
    seconds: float


@dataclass(frozen=True)
class Scored:
    """A scored cell's record, as the ledger keeps it (a class, so Tune does not flatten it)."""

    record: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """A pretraining or scoring that raised: its cells fail, the study goes on."""

    error: str


def to_config(unit: Unit) -> dict[str, Any]:
    """The Tune config of a unit; `cell` is for Tune's trial names and the per-cell scheduler."""
    return {"cell": unit.cell.id, "unit": unit}


def from_config(config: dict[str, Any]) -> Unit:
    return config["unit"]


# what a pretraining reports: an outcome per pair, in its order
PretrainingOutcomes = tuple["PretrainingSummary | Failure", ...]


def result_of(
    tune_result: dict | None,
) -> PretrainingOutcomes | Scored | Failure | PackProgress | None:
    """The typed result a pretraining, scoring or pack reported; None when it never reported."""
    return (tune_result or {}).get(RESULT)
