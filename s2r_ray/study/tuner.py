"""One cell's hyperparameter search on Optuna's public ask/tell API: no Ray in it, so it is
testable alone, and the Tune searcher is a thin adapter on it.

Each cell's Optuna study lives in the study folder's journal with all its scoring needs (seed,
hyperparameters, stop epoch) on the Optuna trial, so a restarted study continues each
half-tuned cell. A trial whose process died ends failed without an error of its own
(`interrupted`) and does not count: the cell runs another in its place.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from s2r_ray.models.base import Family
from s2r_ray.protocol import Cell
from s2r_ray.study.units import Scoring, Trial, run_status

optuna.logging.set_verbosity(optuna.logging.WARNING)
RUNG = "rung "  # a trial's user attribute "rung 6": its best validation MAE at epoch 6


def trial_seed(study_seed: int, trial_key: str) -> int:
    return (study_seed * 7919 + zlib.crc32(trial_key.encode())) % (2**31)


def interrupted(t: FrozenTrial) -> bool:
    """Failed because its process stopped, not because it raised or diverged. (Journals
    written before this rule mark such trials with an `interrupted` attribute.)"""
    return t.state == TrialState.FAIL and (
        t.user_attrs.get("interrupted", False) or "error" not in t.user_attrs
    )


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """The study folder's journal of every cell's Optuna study."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def run_ends(storage: optuna.storages.BaseStorage) -> dict[str, str]:
    """The MLflow run status of every trial the journal has told (by trial key): a run that a
    killed or stopped process left RUNNING ends as its trial counts, not as interrupted."""
    ends = {}
    for name in optuna.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            config = t.user_attrs.get("config")
            if config is None or t.state not in (TrialState.COMPLETE, TrialState.FAIL):
                continue
            if t.state == TrialState.COMPLETE:
                ends[config["trial_key"]] = run_status(t.user_attrs.get("stopped", False))
            elif not interrupted(t):
                ends[config["trial_key"]] = run_status(False, failed=True)
    return ends


class CellTuner:
    """Asks a cell's Optuna study for trials until `trials_per_cell` of them have ended (an
    interrupted one does not count), then names the trial to score: the best by validation
    MAE."""

    def __init__(
        self,
        cell: Cell,
        storage: optuna.storages.BaseStorage,
        family: Family,
        space: Any,
        *,
        trials_per_cell: int,
        startup_trials: int,
        seed: int,
    ):
        self.cell, self._family, self._space = cell, family, space
        self._per_cell, self._seed = trials_per_cell, seed
        self._study = optuna.create_study(
            storage=storage, study_name=cell.id, direction="minimize", load_if_exists=True
        )
        # Re-seeded by the trials it already has: a resumed cell does not replay its start.
        self._study.sampler = optuna.samplers.TPESampler(
            seed=trial_seed(seed, cell.id) + len(self._study.trials),
            n_startup_trials=startup_trials,
        )
        self._live: dict[int, optuna.trial.Trial] = {}
        for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._study.tell(t.number, state=TrialState.FAIL)  # its process is gone

    @property
    def ended(self) -> int:
        """Trials that count towards `trials_per_cell`."""
        return sum(not interrupted(t) for t in self._ended())

    def wanted(self) -> int:
        """Trials still to ask for."""
        return self._per_cell - self.ended - len(self._live)

    def wants_more(self) -> bool:
        return self.wanted() > 0

    def is_live(self, trial: Trial) -> bool:
        """Asked and not yet told (nor interrupted)."""
        return trial.number in self._live

    def tuned(self) -> bool:
        return self.ended >= self._per_cell

    def ask(self, batch_of: Trial | None = None) -> Trial:
        """The next trial; `batch_of`: one that shares that trial's batch size (a pack's
        members train as one network only in steps of one batch size), the rest searched."""
        dists, fixed = self._family.search_space(self._space, self.cell.is_baseline)
        if batch_of is not None and "batch_size" in dists:
            self._study.enqueue_trial({"batch_size": batch_of.hp["batch_size"]})
        ot = self._study.ask(dists)
        key = f"{self.cell.id}-t{ot.number:02d}"
        trial = Trial(self.cell, ot.number, trial_seed(self._seed, key), {**fixed, **ot.params})
        # the format every journal holds: scoring rebuilds the trial from it alone
        stored = {"cell": self.cell.to_dict(), "trial_key": key, "seed": trial.seed}
        ot.set_user_attr("config", stored | {"hp": trial.hp})
        self._live[ot.number] = ot
        return trial

    def tell(
        self,
        trial: Trial,
        value: float | None,
        *,
        stop_epoch: int | None = None,
        train_seconds: float = 0.0,
        error: str | None = None,
        stopped: bool = False,
    ) -> None:
        """A trial ended: with its best validation MAE (`stopped` early, or run to its end), or
        failed with `error`."""
        ot = self._live.pop(trial.number)
        if value is None:
            ot.set_user_attr("error", error or "raised (see Tune's log)")
            self._study.tell(ot, state=TrialState.FAIL)
            return
        # Rebuild exactly the model this trial scored: same seed, epochs it completed.
        ot.set_user_attr("stop_epoch", stop_epoch)
        ot.set_user_attr("train_seconds", float(train_seconds))
        if stopped:
            ot.set_user_attr("stopped", True)
        self._study.tell(ot, value)

    def record_rung(self, trial: Trial, epoch: int, value: float) -> None:
        """A live trial's best validation MAE at a pack's rung, journaled so that a resumed
        study halves its cell's later packs against it (`rung_values`)."""
        if trial.number in self._live:
            self._live[trial.number].set_user_attr(f"{RUNG}{epoch}", value)

    def rung_values(self) -> dict[int, dict[int, float]]:
        """Every value the cell's trials recorded at a rung: {epoch: {trial number: value}}."""
        values: dict[int, dict[int, float]] = {}
        for t in self._study.get_trials(deepcopy=False):
            for key, value in t.user_attrs.items():
                if key.startswith(RUNG):
                    values.setdefault(int(key[len(RUNG) :]), {})[t.number] = value
        return values

    def interrupt(self) -> None:
        """The study stops: trials still running end failed, without an error of their own."""
        for ot in self._live.values():
            self._study.tell(ot, state=TrialState.FAIL)
        self._live.clear()

    def scoring(self) -> Scoring | None:
        """The scoring of the best completed trial; None when every trial failed."""
        if not self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return None
        best = self._study.best_trial
        stored = best.user_attrs["config"]
        trial = Trial(self.cell, best.number, stored["seed"], stored["hp"])
        return Scoring(trial, best.user_attrs.get("stop_epoch"), best.value)

    def errors(self) -> str:
        return "; ".join(sorted({t.user_attrs.get("error", "?") for t in self._ended()}))

    def counts(self) -> dict[str, float]:
        """What the cell record says of its tuning."""
        counted = [t for t in self._ended() if not interrupted(t)]
        return {
            "trials": len(counted),
            "failed_trials": sum(t.state == TrialState.FAIL for t in counted),
            "trial_seconds": sum(t.user_attrs.get("train_seconds", 0.0) for t in counted),
        }

    def _ended(self) -> list[FrozenTrial]:
        """Every trial that has ended, interrupted or not (a live one has not)."""
        return [t for t in self._study.get_trials(deepcopy=False) if t.number not in self._live]
