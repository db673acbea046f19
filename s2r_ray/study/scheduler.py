"""The adapter between Tune and the study's work: a searcher that hands Tune every unit
(pretraining, trial, scoring; see `s2r_ray.study.units`), and an ASHA scheduler per cell that
only ever sees trials, so a trial is only compared with its own cell's trials."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import Searcher

from s2r_ray.protocol import Cell
from s2r_ray.study import units
from s2r_ray.study.halving import Rungs
from s2r_ray.study.pretraining import Pretrainings
from s2r_ray.study.tuner import CellTuner
from s2r_ray.study.units import (
    ENDED,
    EPOCH,
    METRIC,
    Failure,
    MemberEnd,
    Pack,
    PackProgress,
    Pretraining,
    Scoring,
    Trial,
)

# Times a pretraining or scoring that Tune gave up on is handed out again as a new Tune trial.
# Their own errors are reported, not raised (`work.run_unit`): what Tune gives up on is a lost
# process, actor or node, and after a node is lost, Tune hands retries to its cached actors on
# that node ("actor unavailable") until `tune.max_failures` is spent. Both units are
# deterministic, so running one again costs only its time.
REQUEUES = 3


def failed_record(cell: Cell, error: str) -> dict:
    return {"cell": cell.id, **cell.to_dict(), "status": "failed", "error": error}


class StudySearcher(Searcher):
    """Hands Tune the study's units in order: a finished cell's scoring first (its record goes
    to `on_cell_done` while the study runs), then a pretraining when a slot is free, then a trial
    of the first cell whose pretraining is done (plan order: baselines, then small n); None while
    nothing is ready (in a steered study, also while the next decision is awaited: `steer`
    adds its cells); a slot no trial is ready for may take a pretraining beyond the
    pretraining slots (`Pretrainings`' `borrow`). Its state is the journal and the ledger:
    nothing is checkpointed.

    With `pack` > 1 trials go out as packs of up to `pack` (`units.Pack`): a trial of each
    ready cell that shares the first one's n and m (its repetitions) in turn, then another of
    each, all of the batch size drawn for the first; each member is told as the pack reports
    its end, and each cell's `rungs` (a copy of the empty `rungs` given) record its members'
    rung values for the cell's later packs, in the journal too, so a resumed study's later
    packs halve alike. With `pretrain_pack` > 1, pretrainings of one n go out together."""

    def __init__(
        self,
        cells: list[Cell],
        recorded: set[str],
        tuner: Callable[[Cell], CellTuner],
        pretrainings: Pretrainings,
        on_cell_done: Callable[[dict], None],
        steered: bool = False,
        poll: Callable[[], None] = lambda: None,
        pack: int = 1,
        rungs: Rungs | None = None,
        pretrain_pack: int = 1,
    ):
        super().__init__(metric=METRIC, mode="min")
        if pack > 1 and rungs is None:
            raise ValueError("packs need the cells' rungs")
        self._pack, self._rungs, self._cell_rungs = pack, rungs, {}
        self._pretrain_pack = pretrain_pack
        self._pretrainings, self._tuner = pretrainings, tuner
        self._decided = not steered  # a steered study ends only on a stop decision
        # With no trial live, Tune's loop blocks in `suggest` (up to 600 s) and runs no callback:
        # a steered study awaiting its decision fetches the reducer's results itself.
        self._poll = poll
        self._pairs = {c.pretrain_id: Cell(c.n, c.repetition) for c in cells if c.n}
        self._on_cell_done = on_cell_done
        self._open = [c for c in cells if c.id not in recorded]  # neither recorded nor scoring
        self._tuners = {c.id: tuner(c) for c in self._open}
        self._running: dict[str, units.Unit] = {}  # Tune trial id -> unit
        self._to_score: deque[Scoring] = deque()
        self._again: deque[Pretraining | Scoring] = deque()  # lost with their actor
        self._requeued: dict[str, int] = {}  # unit -> times handed out again
        self._stopping = False
        self.partly_tuned = sum(not t.tuned() and t.ended > 0 for t in self._tuners.values())
        for cell in [c for c in self._open if self._tuners[c.id].tuned()]:
            self._cell_tuned(cell)  # its trials had all ended when the last process stopped

    def steer(self, cells: list[Cell]) -> None:
        """A steering decision arrived: its cells join the experiment (none: the study stops)."""
        if not cells:
            self._decided = True
        for cell in cells:
            self._open.append(cell)
            self._tuners[cell.id] = self._tuner(cell)
            if cell.n:
                self._pairs[cell.pretrain_id] = Cell(cell.n, cell.repetition)
                self._pretrainings.add(cell.pretrain_id)

    def stop(self) -> None:
        """Hand out nothing more; trials still running end as interrupted."""
        self._stopping = True
        for tuner in self._tuners.values():
            tuner.interrupt()

    def suggest(self, trial_id: str) -> dict | str | None:
        unit = self._next()
        if unit is None or isinstance(unit, str):
            return unit
        self._running[trial_id] = unit
        return units.to_config(unit)

    def _next(self) -> units.Unit | str | None:
        if self._stopping:
            return Searcher.FINISHED
        if self._again:
            return self._again.popleft()
        if self._to_score:
            return self._to_score.popleft()
        if pretraining := self._pretraining(idle=False):
            return pretraining
        for cell in list(self._open):
            error = self._pretrainings.error(cell)
            if error is not None:
                self._record(failed_record(cell, f"pretraining failed: {error}"))
            elif self._can_ask(cell):
                return self._ask(cell)
        if pretraining := self._pretraining(idle=True):
            return pretraining
        if not self._decided and not self._open and not self._to_score:
            self._poll()  # the decision, once taken, adds cells (or stops) through `steer`
            if self._open:
                return self._next()
        done = self._decided and not self._open and not self._to_score
        return Searcher.FINISHED if done else None

    def _pretraining(self, idle: bool) -> Pretraining | None:
        keys = self._pretrainings.next(self._pretrain_pack, lambda k: self._pairs[k].n, idle)
        return Pretraining(tuple(self._pairs[k] for k in keys)) if keys else None

    def _can_ask(self, cell: Cell) -> bool:
        return self._tuners[cell.id].wants_more() and self._pretrainings.ready(cell)

    def _ask(self, cell: Cell) -> Trial | Pack:
        if self._pack == 1:
            return self._tuners[cell.id].ask()
        mates = [c for c in self._open if (c.n, c.m) == (cell.n, cell.m) and c != cell]
        trials: list[Trial] = []
        while len(trials) < self._pack and (
            asking := [c for c in [cell, *mates] if self._can_ask(c)]
        ):
            for c in asking[: self._pack - len(trials)]:
                trials.append(self._tuners[c.id].ask(batch_of=trials[0] if trials else None))
        cells = dict.fromkeys(t.cell for t in trials)  # each once, in the pack's order
        return Pack(tuple(trials), {c.id: self._rungs_of(c).snapshot() for c in cells})

    def _rungs_of(self, cell: Cell) -> Rungs:
        """The cell's rungs, with the values its journal holds (a resumed study's too)."""
        if cell.id not in self._cell_rungs:
            assert self._rungs is not None
            rungs = self._cell_rungs[cell.id] = self._rungs.snapshot()
            for epoch, values in self._tuners[cell.id].rung_values().items():
                for number, value in values.items():
                    rungs.record(epoch, number, value)
        return self._cell_rungs[cell.id]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A pack's round or a trial's last report: what ended is told now, while its process
        waits for the report to return, so the journal has it before its run ends."""
        unit = self._running.get(trial_id)
        if self._stopping:
            return
        if isinstance(unit, Pack):
            self._pack_progress(unit, units.result_of(result))
        elif isinstance(unit, Trial) and result.get(ENDED):
            self._trial_ended(unit, result, error=False)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        unit = self._running.pop(trial_id, None)
        if error and self._requeue(unit):
            return
        if isinstance(unit, Pretraining):
            if not self._stopping:  # a job stopped with the study is neither done nor failed
                outcomes = None if error else units.result_of(result)
                lost = Failure("the job failed (see Tune's log)")
                for i, key in enumerate(unit.keys):
                    outcome = outcomes[i] if isinstance(outcomes, tuple) else lost
                    self._pretrainings.ended(key, outcome)
        elif isinstance(unit, Scoring):
            scored = None if error else units.result_of(result)
            if isinstance(scored, units.Scored):
                record = scored.record
            else:
                why = scored.error if isinstance(scored, Failure) else "its job was lost"
                record = failed_record(unit.cell, f"scoring failed: {why}")
            self._on_cell_done(record | self._tuners[unit.cell.id].counts())
        elif isinstance(unit, Trial) and not self._stopping:
            self._trial_ended(unit, result, error)
        elif isinstance(unit, Pack) and not self._stopping:
            self._pack_progress(unit, None if error else units.result_of(result))
            failed = [t for t in unit.trials if self._tuners[t.cell.id].is_live(t)]
            self._pack_progress(unit, PackProgress(tuple(MemberEnd(t.key) for t in failed)))

    def _requeue(self, unit: units.Unit | None) -> bool:
        """Hand a lost pretraining or scoring out again, up to `REQUEUES` times."""
        if self._stopping or not isinstance(unit, Pretraining | Scoring):
            return False
        key = f"{type(unit).__name__} {unit.cell.id}"
        if (times := self._requeued.get(key, 0)) >= REQUEUES:
            return False
        self._requeued[key] = times + 1
        self._again.append(unit)
        return True

    def _pack_progress(self, pack: Pack, progress: object) -> None:
        """Tell the members that ended (a repeated report, or one of a retried pack, tells
        nothing twice) and record their rung values, each to its own cell."""
        if not isinstance(progress, PackProgress):
            return
        trials = {t.key: t for t in pack.trials}
        for key, epoch, value in progress.rung_values:
            trial = trials[key]
            self._rungs_of(trial.cell).record(epoch, trial.number, value)
            self._tuners[trial.cell.id].record_rung(trial, epoch, value)
        for end in progress.ended:
            trial = trials[end.key]
            tuner = self._tuners[trial.cell.id]
            if not tuner.is_live(trial):
                continue
            if end.value is None:
                tuner.tell(trial, None, error=end.error)
            else:
                tuner.tell(
                    trial,
                    end.value,
                    stop_epoch=end.stop_epoch,
                    train_seconds=end.train_seconds,
                    stopped=end.stopped,
                )
            if tuner.tuned():
                self._cell_tuned(trial.cell)

    def _trial_ended(self, trial: Trial, result: dict | None, error: bool) -> None:
        """Told once: by its last report, else as Tune ends it (stopped at a rung, or failed)."""
        tuner = self._tuners[trial.cell.id]
        if not tuner.is_live(trial):
            return
        value = None if error or not result else result.get(METRIC)
        if value is None or not math.isfinite(value):
            tuner.tell(trial, None, error=(result or {}).get("diverged"))
        else:
            it, seconds = result.get(EPOCH), result.get("train_seconds", 0.0)
            stopped = not result.get(ENDED)  # by ASHA, at a rung
            tuner.tell(trial, value, stop_epoch=it, train_seconds=float(seconds), stopped=stopped)
        if tuner.tuned():
            self._cell_tuned(trial.cell)

    def _cell_tuned(self, cell: Cell) -> None:
        """All trials of the cell ended: queue its scoring, or record it failed."""
        tuner = self._tuners[cell.id]
        if (scoring := tuner.scoring()) is None:
            self._record(
                failed_record(cell, f"all trials failed: {tuner.errors()}") | tuner.counts()
            )
        else:
            self._open.remove(cell)
            self._to_score.append(scoring)

    def _record(self, record: dict) -> None:
        self._open = [c for c in self._open if c.id != record["cell"]]
        self._on_cell_done(record)

    def __getstate__(self) -> dict:
        """Tune pickles the searcher; its state is the journal, its hooks this process's."""
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
        self._kwargs = dict(
            metric=METRIC,
            mode="min",
            max_t=max_t,
            reduction_factor=reduction_factor,
            time_attr=EPOCH,
        )
        self._kwargs["grace_period"] = min(grace_period, max_t)
        self._ashas: dict[str, AsyncHyperBandScheduler] = {}
        self._metric, self._mode = METRIC, "min"

    def _asha(self, trial) -> AsyncHyperBandScheduler | None:
        """The bracket set of a trial's cell; None for a pretraining or scoring."""
        unit = units.from_config(trial.config)
        if not isinstance(unit, Trial):
            return None
        if unit.cell.id not in self._ashas:
            self._ashas[unit.cell.id] = AsyncHyperBandScheduler(**self._kwargs)
        return self._ashas[unit.cell.id]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._asha(trial)
        return asha.on_trial_result(tune_controller, trial, result) if asha else self.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if asha := self._asha(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(a._num_stopped for a in self._ashas.values())
        return f"Per-cell ASHA over {len(self._ashas)} cells: {stopped} trials stopped early"
