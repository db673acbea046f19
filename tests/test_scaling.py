"""The scaling fit: exact recovery, honest intervals, degenerate inputs, reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from s2r_ray.render.format import fit_sentence
from s2r_ray.scaling import UNREACHABLE, PowerLawFit, ci_key, fit_batch
from s2r_ray.scaling.simulate import coverage

SIZES = 1000 * 2 ** np.arange(7)


def table(sizes, curve, reps: int = 5, sd: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        [(int(n), r, float(curve(n)) + rng.normal(0, sd)) for n in sizes for r in range(reps)],
        columns=["n", "repetition", "mae"],
    )


def codes(est: PowerLawFit) -> set[str]:
    return {d["code"] for d in est.to_dict()["diagnostics"]}


def strict_json(obj: dict) -> dict:
    """Round-trip through JSON that refuses NaN/inf, as report.json is written."""
    return json.loads(json.dumps(obj, allow_nan=False))


@pytest.mark.parametrize(
    ("D", "alpha", "C"),
    [(5.0, 0.4, 0.3), (120.0, 1.1, 0.0), (3.0, 0.05, 0.2), (0.8, 0.15, 0.05), (40.0, 2.0, 0.1)],
)
def test_exact_curve_recovered(D: float, alpha: float, C: float) -> None:
    est = PowerLawFit(n_boot=200).fit(table(SIZES, lambda n: D * n**-alpha + C))
    fit = est.to_dict()["fit"]
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-6)
    assert fit["D"] == pytest.approx(D, rel=1e-6)
    assert fit["C"] == pytest.approx(C, abs=1e-6)
    # no noise: every resample is the same curve, and the backtest extrapolates exactly
    assert fit["alpha_ci90"] == pytest.approx([alpha, alpha], abs=1e-6)
    assert all(abs(p["rel_error"]) < 1e-6 for e in est.to_dict()["backtest"] for p in e["points"])


def test_batch_fit_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    n = SIZES.astype(float)
    y = 2 * n**-0.5 + 0.1 + rng.normal(0, 0.003, (20, n.size))
    w = rng.uniform(0.5, 2, y.shape)
    batch = fit_batch(n, y, w)
    for i in range(y.shape[0]):
        one = fit_batch(n, y[i : i + 1], w[i : i + 1])
        assert one.alpha[0] == pytest.approx(batch.alpha[i], abs=1e-9)
        assert one.C[0] == pytest.approx(batch.C[i], abs=1e-9)


def test_huber_resists_an_outlying_size() -> None:
    cells = table(SIZES, lambda n: 3 * n**-0.4 + 0.1, sd=0.002, seed=1)
    cells.loc[cells["n"] == 8000, "mae"] += 0.05
    plain = PowerLawFit(n_boot=100).fit(cells).to_dict()["fit"]
    robust = PowerLawFit(n_boot=100, robust=True).fit(cells).to_dict()["fit"]
    assert abs(robust["alpha"] - 0.4) < 0.05 < abs(plain["alpha"] - 0.4)
    assert robust["robust"] is True


def test_intervals_cover_the_truth_on_synthetic_studies() -> None:
    """200 studies of 6-8 sizes x 5 repetitions, realistic shared and own noise."""
    cov = coverage(200, n_boot=500, seed=0)
    for name in ("alpha", "C", "mae_10x"):
        assert 0.80 <= cov[name] <= 0.97, (name, cov)


def test_bootstrap_reproducible_with_seed() -> None:
    cells = table(SIZES, lambda n: 2 * n**-0.5 + 0.1, sd=0.004, seed=2)
    a = PowerLawFit(seed=7, target_mae=0.11).fit(cells).to_dict()
    b = PowerLawFit(seed=7, target_mae=0.11).fit(cells).to_dict()
    c = PowerLawFit(seed=8, target_mae=0.11).fit(cells).to_dict()
    assert a == b
    assert a["fit"]["alpha_ci90"] != c["fit"]["alpha_ci90"]


def test_target_and_extrapolation() -> None:
    D, alpha, C = 2.0, 0.5, 0.1
    est = PowerLawFit(n_boot=200, target_mae=0.11, extrapolate_factors=(10, 100))
    out = est.fit(table(SIZES, lambda n: D * n**-alpha + C)).to_dict()
    assert est.n_for_target(0.11) == pytest.approx((D / 0.01) ** (1 / alpha), rel=1e-6)
    assert est.n_for_target(0.09) == UNREACHABLE
    assert out["n_for_target"]["p_unreachable"] == 0.0
    top = SIZES[-1] * 100
    assert [e["n"] for e in out["extrapolation"]] == [SIZES[-1] * 10, top]
    assert out["extrapolation"][1]["mae"] == pytest.approx(D * top**-alpha + C, rel=1e-6)
    x = np.array([4000.0, 9000.0])
    assert est.predict(x) == pytest.approx(D * x**-alpha + C)
    curve = out["curve"]
    assert curve["n"][0] == SIZES[0] and curve["n"][-1] == pytest.approx(top)
    band = zip(curve["lo"], curve["mae"], curve["hi"], strict=True)
    assert all(lo <= m <= hi for lo, m, hi in band)
    assert "α = 0.5 [0.5, 0.5]" in fit_sentence(out)


def test_target_below_floor_is_unreachable_with_probability() -> None:
    est = PowerLawFit(n_boot=300, target_mae=0.08)
    out = est.fit(table(SIZES, lambda n: 2 * n**-0.5 + 0.1, sd=0.003)).to_dict()
    assert out["n_for_target"]["n"] == UNREACHABLE
    assert out["n_for_target"]["p_unreachable"] > 0.5
    assert "target_unreachable" in codes(est)


def test_two_sizes_give_a_diagnostic_not_an_exception() -> None:
    est = PowerLawFit(target_mae=0.2).fit(table(SIZES[:2], lambda n: n**-0.3))
    out = strict_json(est.to_dict())
    assert [d["code"] for d in out["diagnostics"]] == ["too_few_sizes"]
    assert out["fit"]["alpha"] is None and out["fit"]["sizes_used"] == [1000, 2000]
    assert out["curve"] is None and out["extrapolation"] == [] and out["backtest"] == []
    assert "needs at least 3" in fit_sentence(out)
    with pytest.raises(RuntimeError, match="fewer than 3"):
        est.predict(np.array([1000.0]))


@pytest.mark.parametrize(
    ("curve", "sd", "expected"),
    [
        (lambda n: 0.5, 0.0, {"alpha_not_identified"}),
        (lambda n: 0.3 + 0.02 * np.log10(n), 0.003, {"rising_curve", "alpha_not_identified"}),
    ],
    ids=["all equal", "rising"],
)
def test_flat_fits_leave_alpha_undetermined(curve, sd: float, expected: set[str]) -> None:
    est = PowerLawFit(n_boot=300).fit(table(SIZES, curve, sd=sd))
    out = strict_json(est.to_dict())
    assert expected <= codes(est)
    # D = 0: α is undefined rather than the grid's edge, and its interval is the whole range
    assert out["fit"]["D"] == 0 and out["fit"]["alpha"] is None
    assert out["fit"]["alpha_ci90"] == [pytest.approx(1e-3), 3.0]
    assert out["fit"]["C"] == pytest.approx(np.mean([curve(n) for n in SIZES]), abs=0.01)
    assert "α not identified (flat)" in fit_sentence(out)


@pytest.mark.parametrize("seed", range(4))
def test_noise_without_trend_is_not_identified(seed: int) -> None:
    est = PowerLawFit(n_boot=300).fit(table(SIZES, lambda n: 0.36, sd=0.03, seed=seed))
    assert "alpha_not_identified" in codes(est)
    lo, hi = est.to_dict()["fit"]["alpha_ci90"]
    assert lo < 0.01 and hi > 1.5
    assert est.to_dict()["extrapolation"][0]["mae"] == pytest.approx(0.36, abs=0.02)


def test_parameters_at_their_bounds_are_named() -> None:
    steep = PowerLawFit(n_boot=100).fit(
        table(10 * 2 ** np.arange(6), lambda n: 1e4 * n**-4.0 + 0.1)
    )
    assert steep.to_dict()["fit"]["alpha"] == pytest.approx(3.0)
    assert "alpha_at_bound" in codes(steep)
    pure = PowerLawFit(n_boot=100).fit(table(SIZES, lambda n: 2 * n**-0.3))
    assert pure.to_dict()["fit"]["C"] < 1e-12 and "C_at_bound" in codes(pure)
    small = PowerLawFit(n_boot=300).fit(table(SIZES, lambda n: 2 * n**-0.5 + 0.003, sd=0.003))
    assert "C_indistinguishable_from_zero" in codes(small)


def test_nearly_flat_band_gap_curve_is_not_identified() -> None:
    """science.md: a free fit gave α = 0.012 on means within noise of each other."""
    means = {1000: 0.369, 4000: 0.362, 16000: 0.362, 64000: 0.345, 75000: 0.353}
    est = PowerLawFit().fit(table(means, means.get, sd=0.03, seed=4))
    assert "alpha_not_identified" in codes(est)


def test_non_finite_rows_dropped_and_short_sizes_flagged() -> None:
    cells = table(SIZES, lambda n: 2 * n**-0.5 + 0.1, sd=0.003).astype({"n": float})
    cells.loc[3, "mae"] = np.nan
    cells.loc[7, "n"] = np.inf
    cells = cells.drop(index=[12])
    est = PowerLawFit(n_boot=100, planned_repetitions=5).fit(cells)
    diags = {d["code"]: d["message"] for d in est.to_dict()["diagnostics"]}
    assert diags["non_finite_dropped"].startswith("2 row(s)")
    assert "n=1000 (4/5)" in diags["missing_repetitions"]
    assert "n=4000 (4/5)" in diags["missing_repetitions"]
    assert est.to_dict()["fit"]["repetitions"] == [4, 4, 4, 5, 5, 5, 5]


def test_single_repetition_uses_residuals_or_says_no_intervals() -> None:
    curve = lambda n: 2 * n**-0.5 + 0.1  # noqa: E731
    many = PowerLawFit(n_boot=200).fit(table(SIZES, curve, reps=1, sd=0.002))
    assert "single_repetition" in codes(many)
    lo, hi = many.to_dict()["fit"]["alpha_ci90"]
    assert lo < hi
    three = PowerLawFit(n_boot=200).fit(table(SIZES[:3], curve, reps=1))
    assert three.to_dict()["fit"]["alpha_ci90"] is None
    assert "no intervals" in next(d["message"] for d in three.diagnostics)


def test_m_column_selects_largest_or_given_m() -> None:
    big = table(SIZES, lambda n: 2 * n**-0.5 + 0.1).assign(m=400)
    small = table(SIZES, lambda n: 3 * n**-0.3 + 0.2).assign(m=100)
    cells = pd.concat([big, small])
    assert PowerLawFit(n_boot=50).fit(cells).to_dict()["fit"]["alpha"] == pytest.approx(0.5)
    fit = PowerLawFit(n_boot=50).fit(cells, m=100).to_dict()["fit"]
    assert fit["alpha"] == pytest.approx(0.3) and fit["m"] == 100


def test_alternatives_keep_paper_form_unless_strongly_beaten() -> None:
    paper = PowerLawFit(n_boot=50).fit(table(SIZES, lambda n: 2 * n**-0.5 + 0.1, sd=0.001))
    forms = {a["form"]: a for a in paper.to_dict()["alternatives"]}
    assert set(forms) == {"D*n^-alpha+C", "D*n^-alpha", "broken power law"}
    assert forms["D*n^-alpha+C"]["headline"]
    assert forms["D*n^-alpha"]["delta_aicc"] > 10

    def broken(n: float) -> float:  # slope steepens from 0.1 to 0.7 around n = 16000
        return 0.1 + 0.3 * (n / 1000) ** -0.1 * (1 + (n / 16000) ** 2) ** -0.3

    est = PowerLawFit(n_boot=50).fit(table(1000 * 2 ** np.arange(8), broken, sd=0.002))
    forms = {a["form"]: a for a in est.to_dict()["alternatives"]}
    assert forms["broken power law"]["best_extrapolating"]
    assert forms["broken power law"]["headline"]
    assert "paper_form_disfavoured" in codes(est)
    assert est.to_dict()["fit"]["form"] == "D*n^-alpha+C"  # intervals stay the paper form's


def test_ci_level_names_the_keys() -> None:
    out = PowerLawFit(n_boot=50, ci=0.8).fit(table(SIZES, lambda n: n**-0.5 + 0.1)).to_dict()
    assert ci_key("alpha", 0.8) in out["fit"] and "alpha_ci90" not in out["fit"]
    assert ci_key("", 0.9) == "ci90"
