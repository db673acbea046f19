"""The multiplexing searcher, driven directly: no Ray cluster needed."""

import json
import math

import optuna

from s2r_ray.config import FinetuneSpace, PretrainConfig
from s2r_ray.models.mlp import MLPFamily, MLPOptions
from s2r_ray.protocol import Cell
from s2r_ray.search import CellSearcher, Searcher

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


class _Pretrainings:
    """The two questions the searcher asks of the study's pretraining."""

    def __init__(self, ready: dict[str, bool], failed: dict[str, str] | None = None):
        self.is_ready, self.failed = ready, failed or {}

    def ready(self, cell: Cell) -> bool:
        return cell.is_baseline or self.is_ready[cell.pretrain_id]

    def error(self, cell: Cell) -> str | None:
        return self.failed.get(cell.pretrain_id)


def _searcher(cells, pretrainings, done, storage=None, per_cell=2) -> CellSearcher:
    return CellSearcher(
        cells,
        MLP,
        FinetuneSpace(),
        trials_per_cell=per_cell,
        startup_trials=1,
        seed=0,
        storage=storage or optuna.storages.InMemoryStorage(),
        pretrainings=pretrainings,
        on_cell_done=done.append,
    )


def test_searcher_waits_for_pretraining_scores_each_cell_once_and_first():
    cells = [Cell(0, 0), Cell(100, 0)]
    pre = _Pretrainings({"n100-r0": False})
    done = []
    s = _searcher(cells, pre, done)
    a, b = s.suggest("a"), s.suggest("b")
    assert a["cell"]["n"] == 0 and b["cell"]["n"] == 0
    assert a["trial_key"] == "n0-mall-r0-t00" and b["trial_key"] == "n0-mall-r0-t01"
    assert s.suggest("x") is None  # the n=100 cell is not pretrained yet

    s.on_trial_complete("a", {"best_val_mae": 0.5, "training_iteration": 7, "train_seconds": 1.0})
    s.on_trial_complete("b", {"best_val_mae": 0.3, "training_iteration": 4, "train_seconds": 2.0})
    assert not done  # the cell's record comes from its scoring job
    pre.is_ready["n100-r0"] = True
    score = s.suggest("s0")  # scoring jumps ahead of the now-ready n=100 trials
    assert score["trial_key"] == "n0-mall-r0-score" and score["cell"] == a["cell"]
    best = score["score"]
    assert best["trial_key"] == b["trial_key"] and best["value"] == 0.3
    assert best["stop_epoch"] == 4  # the epochs it completed, to rebuild it exactly
    assert best["hp"] == b["hp"] and best["seed"] == b["seed"]

    c, d = s.suggest("c"), s.suggest("d")
    assert c["cell"]["n"] == 100 and d["cell"]["n"] == 100
    assert s.suggest("e") is None  # all trials issued, but the n=100 cell is not scored yet
    s.on_trial_complete(
        "s0", {"record": json.dumps({"cell": "n0-mall-r0", "status": "ok", "mae": 0.4})}
    )
    (record,) = done
    assert record["mae"] == 0.4 and record["trials"] == 2 and record["trial_seconds"] == 3.0

    s.on_trial_complete("c", None, error=True)
    s.on_trial_complete("d", {"best_val_mae": math.inf, "diverged": "fine-tuning diverged at 1"})
    assert done[1]["status"] == "failed" and "all trials failed" in done[1]["error"]
    assert "diverged" in done[1]["error"] and "raised" in done[1]["error"]
    assert s.suggest("f") == Searcher.FINISHED


def test_a_failed_pretraining_fails_its_cells_without_trials():
    done = []
    s = _searcher([Cell(100, 0)], _Pretrainings({"n100-r0": True}, {"n100-r0": "diverged"}), done)
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
    journal = str(tmp_path / "optuna.journal")
    storage = lambda: optuna.storages.JournalStorage(  # noqa: E731
        optuna.storages.journal.JournalFileBackend(journal)
    )
    cells, pre = [Cell(0, 0)], _Pretrainings({})
    first = _searcher(cells, pre, [], storage(), per_cell=2)
    a, b = first.suggest("a"), first.suggest("b")
    first.on_trial_complete("a", {"best_val_mae": 0.5, "training_iteration": 3})
    # the driver dies here, with b running

    done: list[dict] = []
    second = _searcher(cells, pre, done, storage(), per_cell=2)
    second.skip(set())
    assert second.partly_tuned == 1
    c = second.suggest("c")
    assert c["trial_key"] == "n0-mall-r0-t02"  # t01 was b, interrupted
    assert second.suggest("d") is None  # 1 ended + 1 running; the interrupted one not counted
    second.on_trial_complete("c", {"best_val_mae": 0.4, "training_iteration": 2})
    score = second.suggest("s")
    assert score["score"]["trial_key"] == c["trial_key"] and score["score"]["stop_epoch"] == 2
    assert a["trial_key"] == "n0-mall-r0-t00" and b["trial_key"] == "n0-mall-r0-t01"
    second.on_trial_complete("s", {"record": json.dumps({"cell": "n0-mall-r0", "status": "ok"})})
    assert done[0]["trials"] == 2  # the interrupted trial does not count

    third = _searcher(cells, pre, [], storage(), per_cell=2)
    third.skip({"n0-mall-r0"})  # the ledger holds the cell: nothing left to do
    assert third.suggest("e") == Searcher.FINISHED
