"""A cell's tuner and the study's searcher, driven directly: no Ray cluster needed."""

import math

import optuna

from s2r_ray.config import FinetuneSpace, PretrainConfig
from s2r_ray.models.mlp import MLPFamily, MLPOptions
from s2r_ray.protocol import Cell
from s2r_ray.study.halving import Rungs
from s2r_ray.study.pretraining import Pretrainings
from s2r_ray.study.scheduler import REQUEUES, Searcher, StudySearcher
from s2r_ray.study.tuner import CellTuner, open_journal, run_ends
from s2r_ray.study.units import (
    ENDED,
    RESULT,
    Failure,
    MemberEnd,
    Pack,
    PackProgress,
    Pretraining,
    PretrainingSummary,
    Scored,
    Scoring,
    Trial,
)
from s2r_ray.study.units import from_config as unit

MLP = MLPFamily(MLPOptions(), PretrainConfig())


def test_baseline_cells_never_search_freeze_depth():
    dists, fixed = MLP.search_space(FinetuneSpace(freeze=[0, 1, 2]), baseline=True)
    assert "freeze" not in dists and fixed["freeze"] == 0
    dists, _ = MLP.search_space(FinetuneSpace(freeze=[0, 1, 2]), baseline=False)
    assert list(dists["freeze"].choices) == [0, 1, 2]


def test_fixed_values_are_not_searched():
    dists, fixed = MLP.search_space(FinetuneSpace(lr=1e-3, epochs=(30, 30)), baseline=False)
    assert fixed["lr"] == 1e-3 and fixed["epochs"] == 30
    assert "lr" not in dists and "epochs" not in dists


SUMMARY = PretrainingSummary(source_val_mae=0.3, steps=200, converged=True, seconds=2.0)


def _pretrainings(*needed: str, slots: int = 1) -> Pretrainings:
    return Pretrainings(list(needed), set(), slots, lambda line: None)


def _tuners(storage=None, per_cell=2):
    storage = storage or optuna.storages.InMemoryStorage()

    def make(cell: Cell) -> CellTuner:
        return CellTuner(
            cell, storage, MLP, FinetuneSpace(), trials_per_cell=per_cell, startup_trials=1, seed=0
        )

    return make


def _searcher(cells, pretrainings, done, storage=None, per_cell=2, recorded=()) -> StudySearcher:
    return StudySearcher(
        cells, set(recorded), _tuners(storage, per_cell), pretrainings, done.append
    )


def test_a_tuner_alone_asks_tells_and_selects_the_best_trial():
    tuner = _tuners()(Cell(0, 0))
    a, b = tuner.ask(), tuner.ask()
    assert (a.key, b.key) == ("n0-mall-r0-t00", "n0-mall-r0-t01") and not tuner.wants_more()
    tuner.tell(a, 0.5, stop_epoch=7, train_seconds=1.0)
    assert not tuner.tuned()
    tuner.tell(b, 0.3, stop_epoch=4, train_seconds=2.0)
    assert tuner.tuned()
    scoring = tuner.scoring()
    assert scoring.trial == b and scoring.stop_epoch == 4 and scoring.selection_val_mae == 0.3
    assert tuner.counts() == {"trials": 2, "failed_trials": 0, "trial_seconds": 3.0}


def test_searcher_waits_for_pretraining_scores_each_cell_once_and_first():
    cells = [Cell(0, 0), Cell(100, 0)]
    done = []
    s = _searcher(cells, _pretrainings("n100-r0"), done)
    p = unit(s.suggest("p"))  # pretraining first: the cells waiting on it start sooner
    assert p == Pretraining((Cell(100, 0),))
    a, b = unit(s.suggest("a")), unit(s.suggest("b"))
    assert isinstance(a, Trial) and a.cell.n == 0 and b.cell.n == 0
    assert a.key == "n0-mall-r0-t00" and b.key == "n0-mall-r0-t01"
    assert s.suggest("x") is None  # the n=100 cell is not pretrained yet

    s.on_trial_complete("a", {"best_val_mae": 0.5, "epoch": 7, "train_seconds": 1.0})
    s.on_trial_complete("b", {"best_val_mae": 0.3, "epoch": 4, "train_seconds": 2.0})
    assert not done  # the cell's record comes from its scoring
    s.on_trial_complete("p", {RESULT: (SUMMARY,)})
    score = unit(s.suggest("s0"))  # scoring jumps ahead of the now-ready n=100 trials
    assert isinstance(score, Scoring) and score.key == "n0-mall-r0-score"
    assert score.trial == b and score.selection_val_mae == 0.3
    assert score.stop_epoch == 4  # the epochs it completed, to rebuild it exactly

    c, d = unit(s.suggest("c")), unit(s.suggest("d"))
    assert c.cell.n == 100 and d.cell.n == 100
    assert s.suggest("e") is None  # all trials issued, but the n=100 cell is not scored yet
    s.on_trial_complete("s0", {RESULT: Scored({"cell": "n0-mall-r0", "status": "ok", "mae": 0.4})})
    (record,) = done
    assert record["mae"] == 0.4 and record["trials"] == 2 and record["trial_seconds"] == 3.0

    s.on_trial_complete("c", None, error=True)
    s.on_trial_complete("d", {"best_val_mae": math.inf, "diverged": "fine-tuning diverged at 1"})
    assert done[1]["status"] == "failed" and "all trials failed" in done[1]["error"]
    assert "diverged" in done[1]["error"] and "raised" in done[1]["error"]
    assert s.suggest("f") == Searcher.FINISHED


def test_a_failed_pretraining_fails_its_cells_without_trials():
    done = []
    s = _searcher([Cell(100, 0)], _pretrainings("n100-r0"), done)
    s.suggest("p")
    s.on_trial_complete("p", {RESULT: (Failure("diverged"),)})
    assert s.suggest("a") == Searcher.FINISHED
    assert done == [
        {
            "cell": "n100-mall-r0",
            "n": 100,
            "repetition": 0,
            "m": None,
            "status": "failed",
            "error": "pretraining failed: diverged",
        }
    ]


def test_a_restarted_searcher_continues_each_cell_from_the_journal(tmp_path):
    """A killed driver's journal: one trial ended, one was running. The next process counts
    the ended one, marks the running one interrupted, and runs one more in its place."""
    storage = lambda: open_journal(tmp_path / "optuna.journal")  # noqa: E731
    cells, pre = [Cell(0, 0)], _pretrainings()
    first = _searcher(cells, pre, [], storage(), per_cell=2)
    a, b = unit(first.suggest("a")), unit(first.suggest("b"))
    first.on_trial_complete("a", {"best_val_mae": 0.5, "epoch": 3})
    # the driver dies here, with b running

    done: list[dict] = []
    second = _searcher(cells, pre, done, storage(), per_cell=2)
    assert second.partly_tuned == 1
    c = unit(second.suggest("c"))
    assert c.key == "n0-mall-r0-t02"  # t01 was b, interrupted
    assert second.suggest("d") is None  # 1 ended + 1 running; the interrupted one not counted
    second.on_trial_complete("c", {"best_val_mae": 0.4, "epoch": 2})
    score = unit(second.suggest("s"))
    assert score.trial == c and score.stop_epoch == 2
    assert a.key == "n0-mall-r0-t00" and b.key == "n0-mall-r0-t01"
    second.on_trial_complete("s", {RESULT: Scored({"cell": "n0-mall-r0", "status": "ok"})})
    assert done[0]["trials"] == 2  # the interrupted trial does not count

    third = _searcher(cells, pre, [], storage(), per_cell=2, recorded={"n0-mall-r0"})
    assert third.suggest("e") == Searcher.FINISHED  # the ledger holds the cell


def test_a_trial_is_told_at_its_last_report_so_a_killed_study_never_runs_it_again(tmp_path):
    """A trial's process ends its MLflow run FINISHED once its last report returns, and the
    driver tells it before that: a driver killed between the two leaves it in the journal, so
    the next process counts it and asks only for the one that was running."""
    storage = lambda: open_journal(tmp_path / "optuna.journal")  # noqa: E731
    cells, pre = [Cell(0, 0)], _pretrainings()
    first = _searcher(cells, pre, [], storage(), per_cell=2)
    a, b = unit(first.suggest("a")), unit(first.suggest("b"))
    last = a.hp["epochs"]
    first.on_trial_result("a", {"best_val_mae": 0.5, "epoch": 2})  # a rung's: nothing ends
    ended = {"best_val_mae": 0.4, "epoch": last, "train_seconds": 1.0, ENDED: True}
    first.on_trial_result("a", ended)
    # the driver dies here, before Tune ends trial a, with b running: a's run, were its process
    # killed before ending it, ends as the journal says
    assert run_ends(storage()) == {a.key: "FINISHED"}

    done: list[dict] = []
    second = _searcher(cells, pre, done, storage(), per_cell=2)
    c = unit(second.suggest("c"))
    assert (b.key, c.key) == ("n0-mall-r0-t01", "n0-mall-r0-t02")  # c in b's place
    assert second.suggest("d") is None  # a counts
    second.on_trial_complete("c", {"best_val_mae": 0.6, "epoch": 5})  # ASHA stopped it
    score = unit(second.suggest("s"))
    assert score.trial == a and score.stop_epoch == last and score.selection_val_mae == 0.4
    assert run_ends(storage()) == {a.key: "FINISHED", c.key: "KILLED"}  # as ASHA's stops end
    second.on_trial_complete("s", {RESULT: Scored({"cell": "n0-mall-r0", "status": "ok"})})
    assert done[0]["trials"] == 2 and done[0]["trial_seconds"] == 1.0

    # uninterrupted, Tune's end of the trial tells nothing twice
    third = _searcher([Cell(0, 1)], pre, [], per_cell=1)
    t = unit(third.suggest("t"))
    third.on_trial_result("t", {"best_val_mae": 0.3, "epoch": 4, ENDED: True})
    third.on_trial_complete("t", {"best_val_mae": 0.3, "epoch": 4, ENDED: True})
    assert isinstance(unit(third.suggest("s")), Scoring) and t.key == "n0-mall-r1-t00"


def test_a_pretraining_or_scoring_tune_gave_up_on_is_handed_out_again_a_few_times():
    """What Tune gives up on for these units is a lost actor or node (their own errors are
    reported as a `Failure`): after a node loss Tune can spend a unit's retries on its dead
    cached actors, so the searcher hands the unit out again, as a new Tune trial, up to
    REQUEUES times; a reported failure is final at once."""
    done: list[dict] = []
    s = _searcher([Cell(100, 0)], _pretrainings("n100-r0"), done, per_cell=1)
    p = unit(s.suggest("p0"))
    for k in range(REQUEUES):
        s.on_trial_complete(f"p{k}", None, error=True)
        assert unit(s.suggest(f"p{k + 1}")) == p  # before anything else, the slot still held
    s.on_trial_complete(f"p{REQUEUES}", None, error=True)
    assert s.suggest("x") == Searcher.FINISHED  # given up: the cell fails
    assert done[0]["status"] == "failed" and "pretraining failed" in done[0]["error"]

    done.clear()
    s = _searcher([Cell(0, 0)], _pretrainings(), done, per_cell=1)
    s.suggest("a")
    s.on_trial_complete("a", {"best_val_mae": 0.5, "epoch": 3})
    score = unit(s.suggest("s0"))
    s.on_trial_complete("s0", None, error=True)
    assert unit(s.suggest("s1")) == score and not done
    s.on_trial_complete("s1", {RESULT: Failure("the ensemble diverged")})
    assert done[0]["error"] == "scoring failed: the ensemble diverged"
    assert s.suggest("y") == Searcher.FINISHED


def test_pretrainings_run_in_slots_and_a_lost_one_fails_its_cells():
    lines: list[str] = []
    pre = Pretrainings(["n50-r0", "n50-r1", "n200-r0"], {"n50-r1"}, 1, lines.append)
    assert pre.loaded == ["n50-r1"] and pre.ready(Cell(50, 1))  # on disk: never recomputed
    assert pre.next() == ["n50-r0"] and pre.next() == []  # the one slot is taken
    assert not pre.ready(Cell(50, 0)) and pre.ready(Cell(0, 0))
    pre.ended("n50-r0", SUMMARY)
    assert pre.ready(Cell(50, 0)) and pre.error(Cell(50, 0)) is None
    assert pre.next() == ["n200-r0"] and pre.next() == []
    pre.ended("n200-r0", Failure("the job failed"))  # Tune gave up on it (its retries spent)
    assert not pre.ready(Cell(200, 0)) and "failed" in pre.error(Cell(200, 0))
    assert lines[0].startswith("pretraining n50-r0: source hold-out MAE 0.3 after 200 steps")
    assert lines[1].startswith("pretraining n200-r0 FAILED") and "2/2" in lines[1]


def test_a_slot_no_trial_is_ready_for_takes_the_next_pretraining_when_borrowing():
    """Pretraining slots 1 of 2 CPUs: the second CPU runs trials while any is ready, and else
    the next pretraining (`borrow`, the default) rather than idle; a set slot count is a cap."""
    cells = [Cell(0, 0), Cell(100, 0), Cell(300, 0)]
    for borrow in (True, False):
        pre = Pretrainings(["n100-r0", "n300-r0"], set(), 1, lambda line: None, borrow)
        s = _searcher(cells, pre, [], per_cell=1)
        assert unit(s.suggest("p")).keys == ["n100-r0"]
        assert isinstance(unit(s.suggest("a")), Trial)  # a ready trial goes before a borrow
        second = s.suggest("b")
        if borrow:
            assert unit(second).keys == ["n300-r0"]
            assert s.suggest("c") is None  # nothing left to borrow for
        else:
            assert second is None  # the CPU idles until the pretraining ends


def test_pretrainings_of_one_n_go_out_together_and_end_each_on_its_own():
    """`tune.pretrain_pack: 2`: the repetitions of one n share a unit (never two sizes), the
    unit takes one slot, and each pair's outcome ends that pair alone."""
    done: list[dict] = []
    cells = [Cell(n, r) for n in (100, 300) for r in range(3)]
    pre = _pretrainings(*[c.pretrain_id for c in cells], slots=2)
    s = StudySearcher(cells, set(), _tuners(per_cell=1), pre, done.append, pretrain_pack=2)
    first, second = unit(s.suggest("p0")), unit(s.suggest("p1"))
    assert first.keys == ["n100-r0", "n100-r1"] and second.keys == ["n100-r2"]
    assert s.suggest("x") is None  # two units: both slots taken, no cell pretrained yet
    s.on_trial_complete("p0", {RESULT: (SUMMARY, Failure("pretraining diverged at 50"))})
    assert pre.ready(Cell(100, 0)) and "diverged" in pre.error(Cell(100, 1))
    assert unit(s.suggest("p2")).keys == ["n300-r0", "n300-r1"]  # the slot freed
    assert unit(s.suggest("t")).cell == Cell(100, 0)  # r0's trials start
    assert s.suggest("y") is None and done[0]["cell"] == "n100-mall-r1"  # r1's cell failed
    assert "diverged" in done[0]["error"]


def test_a_pretraining_stopped_with_the_study_is_not_a_failure():
    done = []
    s = _searcher([Cell(100, 0)], _pretrainings("n100-r0"), done)
    s.suggest("p")
    s.stop()
    s.on_trial_complete("p", None)
    assert not done and s.suggest("q") == Searcher.FINISHED


def test_a_pack_shares_a_batch_size_and_each_member_is_told_as_it_ends_once():
    """Packs of 3 over a cell of 4 trials: the members share the first one's batch size, are
    told as the pack reports them (a repeated report tells nothing twice), their rung values
    go to the cell's later packs, and a member the pack never reported fails with the pack."""
    done: list[dict] = []
    s = StudySearcher(
        [Cell(0, 0)],
        set(),
        _tuners(per_cell=4),
        _pretrainings(),
        done.append,
        pack=3,
        rungs=Rungs((2, 6), 3),
    )
    first = unit(s.suggest("p1"))
    assert isinstance(first, Pack) and [t.number for t in first.trials] == [0, 1, 2]
    assert len({t.hp["batch_size"] for t in first.trials}) == 1
    t0, t1, t2 = (t.key for t in first.trials)
    progress = PackProgress(
        (MemberEnd(t1, 0.6, 2, 1.0), MemberEnd(t2, None, error="fine-tuning diverged at 1")),
        ((t0, 2, 0.4), (t1, 2, 0.6)),
    )
    for _ in range(2):  # Tune hands the last result again as the trial ends
        s.on_trial_result("p1", {RESULT: progress})
    second = unit(s.suggest("p2"))  # one trial left to ask: a pack of one
    assert [t.number for t in second.trials] == [3]
    assert second.rungs["n0-mall-r0"].values == {2: {0: 0.4, 1: 0.6}}
    t3 = second.trials[0].key
    s.on_trial_complete("p2", {RESULT: PackProgress((MemberEnd(t3, 0.5, 6, 2.0),))})
    s.on_trial_complete("p1", None, error=True)  # member 0 never reported: it fails
    score = unit(s.suggest("s"))
    assert isinstance(score, Scoring) and score.trial == second.trials[0]
    assert score.stop_epoch == 6 and score.selection_val_mae == 0.5
    s.on_trial_complete("s", {RESULT: Scored({"cell": "n0-mall-r0", "status": "ok"})})
    (record,) = done
    assert record["trials"] == 4 and record["failed_trials"] == 2
    assert record["trial_seconds"] == 3.0


def test_a_pack_takes_a_trial_of_each_ready_cell_that_shares_its_n_and_m_in_turn():
    """Three repetitions of n = 100 (one pretrained later) and a baseline, 2 trials each, packs
    of up to 4: a trial of each ready repetition, then a second of each; one batch size; each
    member told and its rung value recorded in its own cell, as the cell's later pack sees."""
    done: list[dict] = []
    cells = [Cell(0, 0), Cell(100, 0), Cell(100, 1), Cell(100, 2)]
    pretrainings = _pretrainings("n100-r0", "n100-r1", "n100-r2", slots=3)
    s = StudySearcher(
        cells, set(), _tuners(), pretrainings, done.append, pack=4, rungs=Rungs((2, 6), 3)
    )
    for i, name in enumerate(("n100-r0", "n100-r1", "n100-r2")):
        assert unit(s.suggest(f"pre{i}")).keys == [name]
    for i in range(2):  # r2's pretraining is not done yet
        s.on_trial_complete(f"pre{i}", {RESULT: (SUMMARY,)})
    baseline = unit(s.suggest("b"))  # cells in plan order: the baseline, alone at its n
    assert [t.key for t in baseline.trials] == ["n0-mall-r0-t00", "n0-mall-r0-t01"]
    pack = unit(s.suggest("p1"))
    assert [t.key for t in pack.trials] == [
        "n100-mall-r0-t00",
        "n100-mall-r1-t00",
        "n100-mall-r0-t01",
        "n100-mall-r1-t01",
    ]
    assert len({t.hp["batch_size"] for t in pack.trials}) == 1
    assert sorted(pack.rungs) == ["n100-mall-r0", "n100-mall-r1"]
    r0, r1 = pack.trials[0].key, pack.trials[1].key
    ends = (MemberEnd(r0, 0.5, 2, 1.0, stopped=True), MemberEnd(r1, 0.7, 2, 1.0, stopped=True))
    s.on_trial_result("p1", {RESULT: PackProgress(ends, ((r0, 2, 0.5), (r1, 2, 0.7)))})
    s.on_trial_complete("pre2", {RESULT: (SUMMARY,)})
    later = unit(s.suggest("p2"))  # r2 alone wants trials now
    assert [t.key for t in later.trials] == ["n100-mall-r2-t00", "n100-mall-r2-t01"]
    assert later.rungs == {"n100-mall-r2": Rungs((2, 6), 3)}
    # each cell's own rungs hold its own member's value: r1's later packs never see r0's
    assert s._rungs_of(Cell(100, 0)).values == {2: {0: 0.5}}
    assert s._rungs_of(Cell(100, 1)).values == {2: {0: 0.7}}


def test_a_resumed_study_halves_a_cells_later_packs_against_the_rung_values_it_journaled(
    tmp_path,
):
    """Packs of 2 over a cell of 4 trials: the first pack records its members' rung values and
    one member ends, then the driver dies. The next process's pack carries those values (the
    interrupted member's too, as ASHA keeps what reached a rung), as an uninterrupted study's
    would."""
    journal = tmp_path / "optuna.journal"

    def searcher() -> StudySearcher:
        storage = open_journal(journal)
        return StudySearcher(
            [Cell(0, 0)],
            set(),
            _tuners(storage, per_cell=4),
            _pretrainings(),
            [].append,
            pack=2,
            rungs=Rungs((2, 6), 3),
        )

    first = searcher()
    t0, t1 = (t.key for t in unit(first.suggest("p1")).trials)
    assert (t0, t1) == ("n0-mall-r0-t00", "n0-mall-r0-t01")
    stopped = MemberEnd(t1, 0.6, 2, 1.0, stopped=True)  # at the rung
    first.on_trial_result("p1", {RESULT: PackProgress((stopped,), ((t0, 2, 0.4), (t1, 2, 0.6)))})
    # the driver dies here, member 0 training; member 1's run, were it left open, ends KILLED
    assert run_ends(open_journal(journal)) == {"n0-mall-r0-t01": "KILLED"}

    later = unit(searcher().suggest("p2"))
    assert [t.number for t in later.trials] == [2, 3]
    assert later.rungs["n0-mall-r0"].values == {2: {0: 0.4, 1: 0.6}}
