"""The multiplexing searcher, driven directly: no Ray cluster needed."""

import json

from s2r_ray.config import FinetuneSpace
from s2r_ray.protocol import Cell
from s2r_ray.search import CellSearcher, Searcher, search_space


def test_baseline_cells_never_search_freeze_depth():
    dists, fixed = search_space(FinetuneSpace(freeze=[0, 1, 2]), Cell(0, 0))
    assert "freeze" not in dists and fixed["freeze"] == 0
    dists, _ = search_space(FinetuneSpace(freeze=[0, 1, 2]), Cell(100, 0))
    assert list(dists["freeze"].choices) == [0, 1, 2]


def test_fixed_values_are_not_searched():
    dists, fixed = search_space(FinetuneSpace(lr=1e-3, epochs=(30, 30)), Cell(10, 0))
    assert fixed["lr"] == 1e-3 and fixed["epochs"] == 30
    assert "lr" not in dists and "epochs" not in dists


def test_searcher_waits_for_pretraining_scores_each_cell_once_and_first():
    cells = [Cell(0, 0), Cell(100, 0)]
    ready = {"n0-r0": True, "n100-r0": False}
    done = []
    s = CellSearcher(
        cells,
        FinetuneSpace(),
        trials_per_cell=2,
        startup_trials=1,
        seed=0,
        is_ready=lambda c: c.is_baseline or ready[c.pretrain_id],
        on_cell_done=done.append,
    )
    a, b = s.suggest("a"), s.suggest("b")
    assert a["cell"]["n"] == 0 and b["cell"]["n"] == 0
    assert a["trial_key"] == "n0-mall-r0-t00" and b["trial_key"] == "n0-mall-r0-t01"
    assert s.suggest("x") is None  # the n=100 cell is not pretrained yet

    s.on_trial_complete("a", {"best_val_mae": 0.5, "training_iteration": 7, "train_seconds": 1.0})
    s.on_trial_complete("b", {"best_val_mae": 0.3, "training_iteration": 4, "train_seconds": 2.0})
    assert not done  # the cell's record comes from its scoring job
    ready["n100-r0"] = True
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
    s.on_trial_complete("d", None, error=True)
    assert done[1]["status"] == "failed" and "all 2 trials failed" in done[1]["error"]
    assert s.suggest("f") == Searcher.FINISHED
