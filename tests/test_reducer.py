"""The reducer's report path, without an actor: cell records in, fitted law out."""

import pytest

from s2r_ray.config import build_config
from s2r_ray.study.reducer import fit_line, report_from_records

CFG = build_config(
    {
        "name": "exact",
        "sizes": [100, 300, 1000, 3000, 10000],
        "repetitions": 3,
        "target_mae": 0.2,
        "report": {"n_boot": 200},
    }
)


def _records(law, sizes, reps=3, failed=()):
    out = [
        {
            "cell": f"n{n}-mall-r{r}",
            "n": n,
            "m": None,
            "repetition": r,
            "status": "ok",
            "mae": law(n),
            "rmse": law(n) * 1.2,
            "trials": 4,
        }
        for n in [0, *sizes]
        for r in range(reps)
    ]
    for n, r in failed:
        out.append(
            {
                "cell": f"n{n}-mall-r{r}",
                "n": n,
                "m": None,
                "repetition": r,
                "status": "failed",
                "error": "all 4 trials failed",
            }
        )
    return out


def test_fit_on_exact_power_law_points_recovers_the_law():
    def law(n):
        return 0.5 if n == 0 else 3.0 * n**-0.4 + 0.15

    report = report_from_records(CFG, _records(law, CFG.sizes), "complete", {})
    fit = report["fit"]
    assert fit["D"] == pytest.approx(3.0, rel=1e-6)
    assert fit["alpha"] == pytest.approx(0.4, rel=1e-6)
    assert fit["C"] == pytest.approx(0.15, rel=1e-6)
    assert report["n_for_target"]["n"] == pytest.approx((3.0 / 0.05) ** (1 / 0.4), rel=1e-4)
    assert [e["n"] for e in report["extrapolation"]] == [1e5, 1e6]
    assert "alpha=0.40" in fit_line(report)


def test_failed_cells_are_left_out_and_said():
    def law(n):
        return 0.5 if n == 0 else 3.0 * n**-0.4 + 0.15

    records = [r for r in _records(law, CFG.sizes) if not (r["n"] == 3000 and r["repetition"] == 2)]
    records += _records(law, [], failed=[(3000, 2)])[-1:]
    report = report_from_records(CFG, records, "running", {})
    size = next(s for s in report["sizes"] if s["n"] == 3000)
    assert size["repetitions"] == 2
    assert "missing_repetitions" in {d["code"] for d in report["diagnostics"]}


def test_before_three_sizes_the_fit_waits():
    report = report_from_records(CFG, _records(lambda n: 0.3, [100, 300]), "running", {})
    assert fit_line(report) == "fit: waiting for 3 sizes"
