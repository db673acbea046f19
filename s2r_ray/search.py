"""How one Tune experiment serves every (n, r) cell: a searcher that multiplexes one Optuna study
per cell, and an ASHA scheduler per cell so trials are only ever compared within their cell."""

from __future__ import annotations

import json
import pickle
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import Searcher

from s2r_ray.config import FinetuneSpace
from s2r_ray.protocol import Cell
from s2r_ray.scoring import failed_record

METRIC = "best_val_mae"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_space(space: FinetuneSpace, cell: Cell) -> tuple[dict[str, BaseDistribution], dict]:
    """Split the configured space into Optuna distributions and fixed values for this cell."""
    dists: dict[str, BaseDistribution] = {}
    fixed: dict = {}
    for name, log in (("lr", True), ("weight_decay", True), ("dropout", False)):
        v = getattr(space, name)
        if isinstance(v, tuple) and v[0] != v[1]:
            dists[name] = FloatDistribution(v[0], v[1], log=log)
        else:
            fixed[name] = float(v[0] if isinstance(v, tuple) else v)
    if isinstance(space.epochs, tuple) and space.epochs[0] != space.epochs[1]:
        dists["epochs"] = IntDistribution(*space.epochs)
    else:
        fixed["epochs"] = int(space.epochs[0] if isinstance(space.epochs, tuple) else space.epochs)
    for name in ("batch_size", "freeze"):
        v = getattr(space, name)
        choices = sorted(set(v)) if isinstance(v, list) else [v]
        if name == "freeze" and cell.is_baseline:
            choices = [0]  # nothing pretrained to freeze
        if len(choices) > 1:
            dists[name] = CategoricalDistribution(choices)
        else:
            fixed[name] = int(choices[0])
    return dists, fixed


def trial_seed(study_seed: int, trial_key: str) -> int:
    return (study_seed * 7919 + zlib.crc32(trial_key.encode())) % (2**31)


@dataclass
class CellOutcome:
    """What the searcher learned about a cell once all its trials ended."""

    cell: Cell
    trials: int = 0
    best_value: float | None = None
    best_config: dict | None = None
    trial_seconds: float = 0.0


class CellSearcher(Searcher):
    """Asks the Optuna study of the first ready cell (plan order: baselines, then small n).

    A cell is ready when its pretraining is done, so Tune never parks a trial waiting for it;
    until some cell is ready, `suggest` returns None and Tune asks again. When all trials of a
    cell have ended, the next suggestion is that cell's scoring job (its best configuration by
    validation MAE, replayed and scored on test), ahead of any new trial, so finished cells
    reach the reducer while the study runs; `on_cell_done` receives the cell record.
    """

    def __init__(
        self,
        cells: list[Cell],
        space: FinetuneSpace,
        trials_per_cell: int,
        startup_trials: int,
        seed: int,
        is_ready: Callable[[Cell], bool],
        on_cell_done: Callable[[dict], None],
    ):
        super().__init__(metric=METRIC, mode="min")
        self._cells = cells
        self._space = space
        self._per_cell = trials_per_cell
        self._startup = startup_trials
        self._seed = seed
        self._is_ready = is_ready
        self._on_cell_done = on_cell_done
        self._studies: dict[str, optuna.Study] = {}
        self._issued: Counter[str] = Counter()
        self._outcomes = {c.id: CellOutcome(c) for c in cells}
        self._live: dict[str, tuple[Cell, optuna.trial.Trial, dict]] = {}
        self._to_score: deque[CellOutcome] = deque()
        self._scoring: dict[str, CellOutcome] = {}
        self._unscored = {c.id for c in cells}

    def _study(self, cell: Cell) -> optuna.Study:
        if cell.id not in self._studies:
            sampler = optuna.samplers.TPESampler(
                seed=trial_seed(self._seed, cell.id), n_startup_trials=self._startup
            )
            self._studies[cell.id] = optuna.create_study(direction="minimize", sampler=sampler)
        return self._studies[cell.id]

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._to_score:
            out = self._to_score.popleft()
            self._scoring[trial_id] = out
            self._unscored.discard(out.cell.id)
            best = out.best_config
            return {
                **best,
                "trial_key": f"{out.cell.id}-score",
                "score": {**best, "value": out.best_value},
            }
        for cell in self._cells:
            if self._issued[cell.id] >= self._per_cell or not self._is_ready(cell):
                continue
            dists, fixed = search_space(self._space, cell)
            ot = self._study(cell).ask(dists)
            key = f"{cell.id}-t{self._issued[cell.id]:02d}"
            self._issued[cell.id] += 1
            config = {
                "cell": cell.to_dict(),
                "trial_key": key,
                "seed": trial_seed(self._seed, key),
                "hp": {**fixed, **ot.params},
            }
            self._live[trial_id] = (cell, ot, config)
            return config
        if not self._unscored:
            return Searcher.FINISHED
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._scoring:
            self._scored(self._scoring.pop(trial_id), result, error)
            return
        cell, ot, config = self._live.pop(trial_id)
        out = self._outcomes[cell.id]
        out.trials += 1
        value = None if error or not result else result.get(METRIC)
        if value is None:
            self._studies[cell.id].tell(ot, state=TrialState.FAIL)
        else:
            self._studies[cell.id].tell(ot, value)
            out.trial_seconds += float(result.get("train_seconds", 0.0))
            if out.best_value is None or value < out.best_value:
                # Rebuild exactly the model this trial scored: same seed, epochs it completed.
                done = int(result.get("training_iteration", config["hp"]["epochs"]))
                out.best_value = value
                out.best_config = {**config, "stop_epoch": done}
        if out.trials < self._per_cell:
            return
        if out.best_config is None:
            self._unscored.discard(cell.id)
            self._on_cell_done(failed_record(cell, f"all {out.trials} trials failed"))
        else:
            self._to_score.append(out)

    def _scored(self, out: CellOutcome, result: dict | None, error: bool) -> None:
        if error or not result or "record" not in result:
            record = failed_record(out.cell, "scoring failed (see the Tune trial log)")
        else:
            record = json.loads(result["record"])
        record |= {"trials": out.trials, "trial_seconds": out.trial_seconds}
        self._on_cell_done(record)

    def __getstate__(self) -> dict:
        """Tune pickles the searcher into its experiment state; the driver-side hooks (object
        refs, the reducer) belong to this process only and are re-attached on restore."""
        return {**self.__dict__, "_is_ready": None, "_on_cell_done": None}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"studies": self._studies, "issued": self._issued}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._studies, self._issued = state["studies"], state["issued"]


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
