"""How one Tune experiment serves every (n, r) cell: a searcher that multiplexes one Optuna study
per cell, and an ASHA scheduler per cell so trials are only ever compared within their cell."""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter, deque
from collections.abc import Callable

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import Searcher

from s2r_ray.models.base import Family
from s2r_ray.models.hyperparameters import FinetuneSpace
from s2r_ray.pretraining import Pretrainings
from s2r_ray.protocol import Cell
from s2r_ray.scoring import failed_record

METRIC = "best_val_mae"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_seed(study_seed: int, trial_key: str) -> int:
    return (study_seed * 7919 + zlib.crc32(trial_key.encode())) % (2**31)


class CellSearcher(Searcher):
    """Hands Tune every unit of the study's work: pretrainings, trials and scorings.

    First a finished cell's scoring job (its best configuration by validation MAE, replayed and
    scored on test), so finished cells reach the reducer while the study runs; `on_cell_done`
    receives the cell record. Then a pretraining, when a slot is free. Then a trial, from the
    Optuna study of the first ready cell (plan order: baselines, then small n). A cell is ready
    when its pretraining is done, so Tune never parks a trial waiting for it; until some work
    is ready, `suggest` returns None and Tune asks again.

    Each cell's Optuna study lives in the study folder's journal, and everything its scoring
    needs (the trial's key, seed, hyperparameters, epochs) is stored on the Optuna trial, so a
    restarted study continues each half-tuned cell where it stopped. A trial that was running
    when its process died ends failed and `interrupted`, and does not count: the cell runs
    another in its place.
    """

    def __init__(
        self,
        cells: list[Cell],
        family: Family,
        space: FinetuneSpace,
        trials_per_cell: int,
        startup_trials: int,
        seed: int,
        storage: optuna.storages.BaseStorage,
        pretrainings: Pretrainings,
        on_cell_done: Callable[[dict], None],
    ):
        super().__init__(metric=METRIC, mode="min")
        self._family, self._space = family, space
        self._per_cell = trials_per_cell
        self._startup = startup_trials
        self._seed = seed
        self._storage = storage
        self._pretrainings = pretrainings
        self._pretraining: dict[str, str] = {}  # Tune trial id -> pretraining key
        self._source_cells = {c.pretrain_id: Cell(c.n, c.repetition) for c in cells if c.n}
        self._on_cell_done = on_cell_done
        self._studies: dict[str, optuna.Study] = {}
        self._ended: Counter[str] = Counter()  # trials that count towards trials_per_cell
        self._live: dict[str, tuple[Cell, optuna.trial.Trial]] = {}
        self._to_score: deque[Cell] = deque()
        self._scoring: dict[str, Cell] = {}
        self._open = list(cells)  # cells neither recorded nor handed to scoring
        self._stopping = False
        self.partly_tuned = 0
        existing = set(optuna.get_all_study_names(storage))
        for cell in [c for c in cells if c.id in existing]:
            self._resume(cell)

    def _study(self, cell: Cell) -> optuna.Study:
        if cell.id not in self._studies:
            study = optuna.create_study(
                storage=self._storage, study_name=cell.id, direction="minimize", load_if_exists=True
            )
            # Re-seeded by the trials it already has: a resumed cell does not replay its start.
            study.sampler = optuna.samplers.TPESampler(
                seed=trial_seed(self._seed, cell.id) + len(study.trials),
                n_startup_trials=self._startup,
            )
            self._studies[cell.id] = study
        return self._studies[cell.id]

    def _resume(self, cell: Cell) -> None:
        """Count what a previous process tuned; its running trials end failed, `interrupted`."""
        study = self._study(cell)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
        self._ended[cell.id] = sum(not t.user_attrs.get("interrupted") for t in study.trials)
        self.partly_tuned += 0 < self._ended[cell.id] < self._per_cell

    def skip(self, recorded: set[str]) -> None:
        """Leave out the cells the ledger holds; queue the scoring of those whose trials had
        all ended when the previous process stopped."""
        self._open = [c for c in self._open if c.id not in recorded]
        for cell in [c for c in self._open if self._ended[c.id] >= self._per_cell]:
            self._cell_tuned(cell)

    def stop(self) -> None:
        """Hand out nothing more; trials still running end as interrupted."""
        self._stopping = True
        for cell, ot in self._live.values():
            ot.set_user_attr("interrupted", True)
            self._study(cell).tell(ot, state=TrialState.FAIL)
        self._live.clear()

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._stopping:
            return Searcher.FINISHED
        if self._to_score:
            return self._score(trial_id, self._to_score.popleft())
        if key := self._pretrainings.next():
            self._pretraining[trial_id] = key
            cell = self._source_cells[key]
            return {"cell": cell.to_dict(), "trial_key": f"{key}-pretrain", "pretrain": key}
        live = Counter(c.id for c, _ in self._live.values())
        for cell in list(self._open):
            error = self._pretrainings.error(cell)
            if error is not None:
                self._record(failed_record(cell, f"pretraining failed: {error}"))
            elif self._ended[cell.id] + live[cell.id] < self._per_cell and self._pretrainings.ready(
                cell
            ):
                return self._ask(trial_id, cell)
        return Searcher.FINISHED if not self._open and not self._to_score else None

    def _ask(self, trial_id: str, cell: Cell) -> dict:
        dists, fixed = self._family.search_space(self._space, cell.is_baseline)
        ot = self._study(cell).ask(dists)
        key = f"{cell.id}-t{ot.number:02d}"
        config = {
            "cell": cell.to_dict(),
            "trial_key": key,
            "seed": trial_seed(self._seed, key),
            "hp": {**fixed, **ot.params},
        }
        ot.set_user_attr("config", config)
        self._live[trial_id] = (cell, ot)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._scoring:
            self._scored(self._scoring.pop(trial_id), result, error)
            return
        if trial_id in self._pretraining:
            key = self._pretraining.pop(trial_id)
            if not self._stopping:  # a job stopped with the study is neither done nor failed
                done = not error and result and "pretraining" in result
                self._pretrainings.ended(key, json.loads(result["pretraining"]) if done else None)
            return
        if trial_id not in self._live:  # already ended by stop()
            return
        cell, ot = self._live.pop(trial_id)
        value = None if error or not result else result.get(METRIC)
        if value is None or not math.isfinite(value):
            ot.set_user_attr("error", (result or {}).get("diverged") or "raised (see Tune's log)")
            self._study(cell).tell(ot, state=TrialState.FAIL)
        else:
            # Rebuild exactly the model this trial scored: same seed, epochs it completed.
            ot.set_user_attr("stop_epoch", result.get("training_iteration"))
            ot.set_user_attr("train_seconds", float(result.get("train_seconds", 0.0)))
            self._study(cell).tell(ot, value)
        self._ended[cell.id] += 1
        if self._ended[cell.id] >= self._per_cell:
            self._cell_tuned(cell)

    def _cell_tuned(self, cell: Cell) -> None:
        """All trials of the cell ended: queue its scoring, or record it failed."""
        if not self._study(cell).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            errors = {t.user_attrs.get("error", "?") for t in self._study(cell).trials}
            why = f"all trials failed: {'; '.join(sorted(errors))}"
            self._record(failed_record(cell, why) | self._trial_counts(cell))
            return
        self._open.remove(cell)
        self._to_score.append(cell)

    def _score(self, trial_id: str, cell: Cell) -> dict:
        self._scoring[trial_id] = cell
        best = self._study(cell).best_trial
        config = best.user_attrs["config"]
        # None replays every epoch: a trial that reported none was never stopped early
        score = {**config, "stop_epoch": best.user_attrs.get("stop_epoch"), "value": best.value}
        return {**config, "trial_key": f"{cell.id}-score", "score": score}

    def _scored(self, cell: Cell, result: dict | None, error: bool) -> None:
        if error or not result or "record" not in result:
            record = failed_record(cell, "scoring failed (see Tune's log)")
        else:
            record = json.loads(result["record"])
        self._on_cell_done(record | self._trial_counts(cell))

    def _trial_counts(self, cell: Cell) -> dict:
        counted = [
            t
            for t in self._study(cell).get_trials(deepcopy=False)
            if not t.user_attrs.get("interrupted")
        ]
        return {
            "trials": len(counted),
            "failed_trials": sum(t.state == TrialState.FAIL for t in counted),
            "trial_seconds": sum(t.user_attrs.get("train_seconds", 0.0) for t in counted),
        }

    def _record(self, record: dict) -> None:
        self._open = [c for c in self._open if c.id != record["cell"]]
        self._on_cell_done(record)

    def __getstate__(self) -> dict:
        """Tune pickles the searcher into its experiment state; the durable state is the
        journal in the study folder, and the hooks belong to this process only."""
        return {"_metric": self._metric, "_mode": self._mode}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the journal in the study folder is this searcher's state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a restarted study reads the journal."""


class PerCellASHA(FIFOScheduler):
    """One ASHA bracket set per cell: a trial is only stopped for losing to its own cell's trials,
    never because another size has a different error level."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: int):
        super().__init__()
        self._kwargs = {
            "metric": METRIC,
            "mode": "min",
            "max_t": max_t,
            "grace_period": min(grace_period, max_t),
            "reduction_factor": reduction_factor,
        }
        self._ashas: dict[str, AsyncHyperBandScheduler] = {}
        self._metric, self._mode = METRIC, "min"

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        key = Cell(**trial.config["cell"]).id
        if key not in self._ashas:
            self._ashas[key] = AsyncHyperBandScheduler(**self._kwargs)
        return self._ashas[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(a._num_stopped for a in self._ashas.values())
        return f"Per-cell ASHA over {len(self._ashas)} cells: {stopped} trials stopped early"
