"""Steering (s2r_ray.scaling.steering): the goal's interval, the next cells, the stops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.posterior import design_dof, jacobian, laplace_covariance, posterior
from s2r_ray.scaling.pricing import database_value, price_target
from s2r_ray.scaling.steering import (
    Goal,
    Plan,
    candidate_sizes,
    expected_drop,
    goal_interval,
    measured_groups,
    next_repetitions,
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


def paired_cells(law_fn, sizes, reps, sd, shared, seed):
    """Cells whose repetition r shares an offset at every size (one split per repetition)."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(size=max(reps))
    rows = []
    for n, k in zip(sizes, reps, strict=True):
        scale = sd * law_fn(n) * (1 + np.sqrt(100 / n)) / 2
        for r in range(k):
            z = np.sqrt(shared) * offsets[r] + np.sqrt(1 - shared) * rng.normal()
            rows.append({"n": n, "repetition": r, "mae": law_fn(n) + scale * z})
    return pd.DataFrame(rows)


def test_coverage_with_correlated_repetitions_is_near_nominal():
    """40 random laws, half the noise shared by a repetition's sizes: the 90% interval of the
    MAE at 100x the largest size and of C covers the truth 78-100% of the time (the old
    size-mean fit, blind to the shared offset, covered ~70% of C here)."""
    rng = np.random.default_rng(7)
    hits = {"mae": 0, "gap": 0}
    for i in range(40):
        a, e0 = rng.uniform(0.1, 1.0), rng.uniform(0.3, 1.2)
        c = rng.uniform(0.05, 0.5) * e0
        d = (e0 - c) * 100**a

        def f(n, d=d, a=a, c=c):
            return d * np.asarray(n, float) ** -a + c

        table = paired_cells(f, GRID, [5] * len(GRID), 0.04, 0.5, seed=i)
        post = posterior(table)
        for key, goal, truth in (("mae", Goal("mae_at", n=1e7), f(1e7)), ("gap", Goal("gap"), c)):
            iv = goal_interval(post, goal)
            hits[key] += iv.lo <= truth <= iv.hi
    assert 31 <= hits["mae"] <= 40 and 31 <= hits["gap"] <= 40, hits


def test_gls_equals_weighted_least_squares_without_correlation():
    """One cell per size, no repetition ids (ρ = 0, equal noise): the posterior mean of (D, C)
    given α is ordinary least squares on the cells."""
    table = cells(GRID, 1, sd=0.01, seed=3).drop(columns="repetition")
    post = posterior(table)
    assert post.rho_grid.tolist() == [0.0]
    k = int(np.argmax(post.prob))
    x = (np.asarray(GRID, float) / post.n_ref) ** -post.alpha[k]
    design = np.stack([x, np.ones_like(x)], 1)
    beta = np.linalg.lstsq(design, table["mae"].to_numpy(), rcond=None)[0]
    assert np.allclose(post.beta[k], beta)


def test_a_known_correlation_is_found():
    """Many repetitions sharing 80% of their noise: ρ's posterior mean is near 0.8, and near 0
    when nothing is shared."""
    sizes, reps = GRID, [8] * len(GRID)
    high = posterior(paired_cells(law, sizes, reps, 0.03, 0.8, seed=1)).rho_mean()
    none = posterior(paired_cells(law, sizes, reps, 0.03, 0.0, seed=1)).rho_mean()
    assert high > 0.6 and none < 0.2, (high, none)


def test_the_lack_of_fit_test_rejects_a_curve_that_is_not_a_power_law():
    def bump(n):
        return law(n) + 0.05 * np.sin(np.log(n))

    bad = posterior(paired_cells(bump, GRID, [5] * len(GRID), 0.02, 0.3, seed=2))
    good = posterior(paired_cells(law, GRID, [5] * len(GRID), 0.02, 0.3, seed=2))
    assert bad.law_p_value < 1e-3 < good.law_p_value


def test_the_expected_drop_is_exact_for_a_correlated_new_cell():
    """The drop expected_drop predicts for one more cell equals the goal's variance computed
    from the information matrix with that cell appended to Σ (its repetition's offset)."""
    table = paired_cells(law, [100, 1000, 10000, 100000], [3, 3, 3, 2], 0.03, 0.5, seed=4)
    post = posterior(table)
    goal = Goal("mae_at", n=1e7)
    var, drop = expected_drop(post, goal, np.array([100000.0]), np.array([1.0]))
    cov = laplace_covariance(post)
    g = goal.gradient(post)
    cells_ = post.cells
    n_new = np.append(cells_.n, 100000.0)
    rep_new = np.append(cells_.rep, 2)  # the next repetition at n = 100000
    sd_new = np.append(post.sd, post.sd[cells_.n == 100000.0][0])
    same = (rep_new[:, None] == rep_new[None, :]).astype(float)
    jac = jacobian(post, n_new)
    exact = np.empty(post.alpha.size)
    for k in range(post.alpha.size):
        sigma = (np.eye(n_new.size) + post.rho[k] * (same - np.eye(n_new.size))) * np.outer(
            sd_new, sd_new
        )
        info = jac[k].T @ np.linalg.solve(sigma, jac[k]) / post.phi[k]
        exact[k] = g[k] @ np.linalg.solve(info, g[k])
    assert np.isclose(var, post.prob @ np.einsum("ki,kij,kj->k", g, cov, g))
    assert np.isclose(drop[0], var - post.prob @ exact, rtol=1e-4)
    assert next_repetitions(post, 100000.0, 2) == [2, 3]


def test_the_largest_opening_size_can_open_with_more_repetitions():
    opening = plan(grid=(100, 1000, 10_000), top_repetitions=3)
    d = propose(cells([100, 1000, 10_000], 2), Goal("gap"), opening, FLAT, 1e6)
    assert (d.action, d.n, d.repetitions, d.reason) == ("measure", 10_000, 1, "opening grid")
    d = propose(cells([100, 1000, 10_000], [2, 2, 3]), Goal("gap"), opening, FLAT, 1e6)
    assert d.reason != "opening grid"


def test_the_design_dof_grows_with_repetitions_and_sizes():
    sizes = [100, 1000, 10_000]
    base = design_dof(sizes, [2, 2, 2])
    assert design_dof(sizes, [2, 2, 3]) > base
    assert design_dof([*sizes, 72_000], [2, 2, 2, 2]) > base
    assert design_dof(sizes, [5, 5, 5]) > design_dof(sizes, [3, 3, 3])


def test_the_width_score_values_repetitions_at_the_largest_size():
    table = cells([100, 1000, 10_000, 100_000], 2)
    d = propose(table, Goal("mae_at", n=1e7), plan(score="width"), FLAT, 1e6)
    assert d.action == "measure" and d.score is not None and d.score > 0


def test_a_block_of_repetitions_buys_what_single_ones_cannot():
    """One more cell at a size measured once lowers the design's t dof (a second size with a
    noise estimate of 1 dof widens the trend at the end the extrapolation rests on), so a
    policy of single repetitions never adds it; a block of 4 pins the noise there and is the
    best move."""
    table = cells([100, 1000, 10_000, POOL], [4, 4, 4, 1], sd=0.02)
    goal = Goal("mae_at", n=1e7)
    single = propose(table, goal, plan(precision=0.0, blocks=(1,)), FLAT, 1e6)
    assert single.n != POOL
    block = propose(table, goal, plan(precision=0.0, blocks=(1, 2, 4)), FLAT, 1e6)
    assert (block.n, block.repetitions, block.new_size) == (POOL, 4, False)
    assert block.after.width < single.after.width


def test_a_block_fits_beside_the_repetitions_a_size_has_used():
    """Failed cells use repetitions too: a block never takes a size past max_repetitions."""
    table = cells([100, 1000, 10_000, POOL], [4, 4, 4, 1], sd=0.02)
    goal, capped = Goal("mae_at", n=1e7), plan(precision=0.0, max_repetitions=6)
    assert propose(table, goal, capped, FLAT, 1e6).repetitions == 4  # 1 + 4 <= 6
    used = {100: 4, 1000: 4, 10_000: 4, POOL: 4}
    d = propose(table, goal, capped, FLAT, 1e6, used=used)
    assert d.action == "measure" and d.repetitions + used.get(d.n, 0) <= 6
