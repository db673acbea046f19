"""A trial's kept network and the scoring that reuses it instead of training it again: no Ray
cluster (work.py's functions called directly)."""

import numpy as np
import pytest
import torch

from s2r_ray.config import StudyConfig, SyntheticData
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.models import make_family
from s2r_ray.protocol import make_plan
from s2r_ray.study.units import KeptNetwork, Scoring, Trial
from s2r_ray.study.work import score_cell

HP = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 10, "batch_size": 32, "freeze": 0}


@pytest.fixture(scope="module")
def cell_setup():
    torch.set_num_threads(1)
    cfg = StudyConfig(name="t", sizes=[200], repetitions=1, model={"hidden": [16, 8]})
    plan = make_plan(cfg, make_synthetic(SyntheticData(n_source=400, n_target=300)))
    cell = next(c for c in plan.cells if c.is_baseline)
    return make_family(cfg), plan, cell


class Stop(BaseException):
    """What ASHA's stop looks like from inside a trial: a SystemExit out of tune.report."""


def _trial_until(family, plan, trial, epoch, ran_on=0):
    """The trial as work._finetune runs it, stopped `ran_on` epochs after `epoch`."""
    kept = KeptNetwork([])

    def on_epoch(e, val, best):
        kept.reached = e
        if e == epoch + ran_on:
            raise Stop

    with pytest.raises(Stop):
        family.finetune(
            *plan.target_split(trial.cell),
            hp=trial.hp,
            seed=trial.seed,
            on_epoch=on_epoch,
            on_best=kept.add,
        )
    return kept.trimmed()


@pytest.mark.parametrize(("ensemble", "ran_on"), [(1, 0), (3, 2)])
def test_scoring_reuses_the_trials_network_exactly(cell_setup, ensemble, ran_on):
    """Member 0 from the trial's kept network scores exactly as replaying it; the thread may
    have trained on past the stop ASHA decided (ran_on) and the window still holds the stop."""
    family, plan, cell = cell_setup
    trial = Trial(cell, 0, 11, {**HP, "dropout": 0.1})
    kept = _trial_until(family, plan, trial, 6, ran_on)
    unit = Scoring(trial, 6, 0.0)
    alone = score_cell(plan, unit, None, family, 1, "cpu")  # member 0 replayed alone
    replayed = score_cell(plan, unit, None, family, ensemble, "cpu")
    reused = score_cell(plan, unit, None, family, ensemble, "cpu", kept)
    assert reused["trial_network_reused"] and not replayed["trial_network_reused"]
    for key in ("single_mae", "val_mae"):
        assert reused[key] == alone[key]
    # the members trained as one batch: equal up to the float order of stacked products
    assert reused["mae"] == pytest.approx(replayed["mae"], rel=1e-4)


def test_a_stop_outside_the_kept_window_is_replayed(cell_setup):
    family, plan, cell = cell_setup
    trial = Trial(cell, 1, 12, HP)
    kept = _trial_until(family, plan, trial, 9)
    kept.bests = [b for b in kept.bests if b[0] >= 5]  # as if trimmed to a later window
    assert kept.at(4) is None and kept.at(10) is None  # before the window; never reached
    record = score_cell(plan, Scoring(trial, 4, 0.0), None, family, 1, "cpu", kept)
    assert not record["trial_network_reused"]
    assert np.isfinite(record["mae"])
