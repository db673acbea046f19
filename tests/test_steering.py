"""Steering (s2r_ray.scaling.steering): the goal's interval, the next cells, the stops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.posterior import posterior
from s2r_ray.scaling.pricing import database_value, price_target
from s2r_ray.scaling.steering import (
    Goal,
    Plan,
    candidate_sizes,
    goal_interval,
    measured_groups,
    propose,
)

D, ALPHA, C = 3.0, 0.4, 0.2
POOL = 100_000
FLAT = CostModel(1.0, 0.0, 1.0)  # every cell costs 1 s


def law(n):
    return D * np.asarray(n, float) ** -ALPHA + C


def cells(sizes, reps, sd=0.01, seed=0, curve=law) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    reps = np.broadcast_to(reps, (len(sizes),))
    rows = [
        {"n": n, "repetition": r, "mae": curve(n) + sd * rng.normal()}
        for n, k in zip(sizes, reps, strict=True)
        for r in range(k)
    ]
    return pd.DataFrame(rows)


def plan(**kw) -> Plan:
    return Plan(**({"precision": 0.01, "candidates": candidate_sizes(100, POOL)} | kw))


GRID = [100, 316, 1000, 3162, 10000, 31623, 100000]


@pytest.mark.parametrize(
    "goal, truth",
    [
        (Goal("mae_at", n=1e7), float(law(1e7))),
        (Goal("gap"), C),
        (Goal("n_for_target", target_mae=float(law(1e6))), 1e6),
    ],
)
def test_the_interval_covers_a_known_law(goal, truth):
    post = posterior(measured_groups(cells(GRID, 5, sd=0.003)))
    iv = goal_interval(post, goal)
    assert iv.lo <= truth <= iv.hi
    assert iv.width < 1.0


def test_an_uncertain_extrapolation_asks_for_a_larger_size():
    d = propose(cells([100, 200, 400, 800], 5), Goal("mae_at", n=1e7), plan(), FLAT, 1e6)
    assert d.action == "measure" and d.new_size and d.n > 800
    assert d.after.width < d.before.width


def test_noise_at_the_largest_size_asks_for_repetitions_there():
    table = cells([100, 1000, 10000, POOL], [5, 5, 5, 2], sd=0.02)
    d = propose(table, Goal("mae_at", n=1e7), plan(), FLAT, 1e6)
    assert (d.action, d.n, d.new_size, d.repetitions) == ("measure", POOL, False, 1)


def test_it_stops_when_precise_or_out_of_budget():
    table = cells(GRID, 5, sd=0.001)
    goal = Goal("mae_at", n=1e6)
    assert propose(table, goal, plan(precision=0.5), FLAT, 1e6).stop_reason == "precise"
    poor = propose(table, goal, plan(precision=1e-6), CostModel(100.0, 0.0, 1.0), 50.0)
    assert poor.stop_reason == "budget"
    assert propose(table, goal, plan(precision=1e-6), FLAT, budget_cells=0).stop_reason == "budget"


def test_at_least_four_sizes_and_never_beyond_the_pool():
    table = cells([100, 1000, 10000], 5, sd=0.0005)
    d = propose(table, Goal("gap"), plan(precision=10.0), FLAT, 1e6)
    assert d.action == "measure" and d.new_size and d.n <= POOL
    assert "fewer than 4 sizes" in d.reason
    for goal in (Goal("mae_at", n=1e8), Goal("gap")):
        d = propose(cells([100, 200, 400, 800], 5), goal, plan(), FLAT, 1e6)
        assert d.n <= POOL


def test_the_study_opens_on_its_grid_and_spreads_before_a_fit():
    empty = pd.DataFrame(columns=["n", "repetition", "mae"])
    d = propose(empty, Goal("gap"), plan(grid=(100, 1000)), FLAT, 1e6)
    assert (d.n, d.repetitions, d.reason) == (100, 2, "opening grid")
    d = propose(cells([100, 1000], 2), Goal("gap"), plan(grid=(100, 1000)), FLAT, 1e6)
    assert d.n == POOL  # the candidate farthest from both


def test_a_law_that_fails_falls_back_to_the_grid():
    def bump(n):
        return law(n) + 0.1 * np.sin(np.log(n))

    table = cells(GRID[:5], 3, sd=0.001, curve=bump)
    d = propose(table, Goal("mae_at", n=1e7), plan(grid=tuple(GRID[:5])), FLAT, 1e6)
    assert (d.fallback, d.n, d.repetitions) == (True, 100, 2)  # the grid's 5 repetitions
    assert "does not hold" in d.reason
    full = cells(GRID[:5], 5, sd=0.001, curve=bump)
    d = propose(full, Goal("mae_at", n=1e7), plan(grid=tuple(GRID[:5])), FLAT, 1e6)
    assert d.stop_reason == "grid_done"


def test_decisions_are_json_and_deterministic():
    table = cells([100, 300, 1000, 3000], 3, sd=0.02)
    goal = Goal("n_for_target", target_mae=float(law(3e5)))
    one = propose(table, goal, plan(), CostModel(10.0, 0.01, 1.0), 1e5, when="2026-01-01")
    two = propose(table, goal, plan(), CostModel(10.0, 0.01, 1.0), 1e5, when="2026-01-01")
    assert json.dumps(one.to_dict()) == json.dumps(two.to_dict())
    record = json.loads(json.dumps(one.to_dict()))
    before = record["before"]
    assert before["lo"] <= before["point"]
    assert before["hi"] == "unreachable" or before["hi"] >= before["point"]
    assert set(record) >= {"action", "n", "repetitions", "reason", "before", "after", "when"}


def test_the_cost_model_recovers_a_known_cost_law():
    n = np.repeat(np.geomspace(100, 1e5, 6), 3)
    seconds = (30 + 0.01 * n**1.1) * np.random.default_rng(0).lognormal(0, 0.03, n.size)
    fit = CostModel(60.0, 0.01, 1.0).fit(n, seconds)
    assert fit.fitted and abs(fit.c - 1.1) < 0.05
    assert np.allclose(fit(np.array([100, 1e5])), 30 + 0.01 * np.array([100, 1e5]) ** 1.1, 0.05)
    two = CostModel(0.0, 1.0, 1.1).fit(n[:6], seconds[:6])  # two sizes: the prior's exponent
    assert two.c == 1.1 and abs(two.a - 30) < 5
    assert CostModel(1.0, 2.0, 1.0).fit([], []) == CostModel(1.0, 2.0, 1.0)


def test_price_and_value_are_json_and_sensible():
    post = posterior(measured_groups(cells(GRID, 5, sd=0.003)))
    price = price_target(post, float(law(1e6)), 50_000, CostModel(30.0, 0.01, 1.0), 5)
    lo, hi = price["rows_needed"]["ci90"]
    assert lo <= 1e6 <= hi and price["rows_to_simulate"]["point"] > 0
    assert price["confirm_seconds"]["point"] > 5 * 30
    value = database_value(post, 50_000)
    assert value["per_10_percent"]["ci90"][1] <= 0
    json.dumps(price | value)
