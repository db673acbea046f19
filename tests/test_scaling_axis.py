"""The target-size axis: scaling per m, learning curves per n, equivalent sample size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from s2r_ray.scaling.target_axis import m_axis
from s2r_ray.stats import mean_ci, paired_gain

M = [50, 100, 200, 400, 800]
N = [1000, 4000, 16000, 64000]


def baseline(m: float) -> float:
    return 2 * m**-0.5 + 0.1


def cells_with_known_equivalent(reps: int = 3) -> pd.DataFrame:
    """Transfer at m = 800 reaches the error the baseline reaches at m_eq = 0.5·n^0.7."""
    rows = [(0, m, r, baseline(m)) for m in M for r in range(reps)]
    rows += [(n, 800, r, baseline(0.5 * n**0.7)) for n in N for r in range(reps)]
    return pd.DataFrame(rows, columns=["n", "m", "repetition", "mae"])


def test_equivalent_samples_match_the_construction() -> None:
    axis, eq, notes = m_axis(cells_with_known_equivalent(), n_boot=200, ci=0.9, seed=0)
    assert notes == []
    assert eq["m_ref"] == 800
    assert eq["baseline_curve"]["beta"] == pytest.approx(0.5, abs=1e-6)
    for point in eq["points"]:
        want = 0.5 * point["n"] ** 0.7
        assert point["m_eq"] == pytest.approx(want, rel=1e-5)
        assert point["gain_factor"] == pytest.approx(want / 800, rel=1e-5)
        assert point["extrapolated"] == (want > 800)
    assert eq["growth_rate"] == pytest.approx(0.7, abs=1e-5)
    assert axis["m_values"] == M and axis["n_values"] == [0, *N]
    curves = {c["n"]: c for c in axis["learning_curves"]}
    assert curves[0]["alpha"] == pytest.approx(0.5, abs=1e-6) and not curves[0]["pretrained"]


def test_equivalent_needs_baseline_at_three_m() -> None:
    cells = cells_with_known_equivalent()
    cells = cells[(cells["n"] > 0) | cells["m"].isin([400, 800])]
    axis, eq, notes = m_axis(cells, n_boot=50, ci=0.9, seed=0)
    assert axis is not None and eq is None
    assert [d["code"] for d in notes] == ["no_equivalent_samples"]
    assert "it has 2" in notes[0]["message"]


def test_no_m_axis_is_said() -> None:
    cells = pd.DataFrame({"n": [0, 1000], "repetition": [0, 0], "mae": [0.3, 0.2]})
    axis, eq, notes = m_axis(cells, n_boot=50, ci=0.9, seed=0)
    assert axis is None and eq is None and notes[0]["code"] == "no_target_axis"


def test_mean_interval_covers_at_five_repetitions() -> None:
    """The expanded percentile interval keeps ~90% coverage where plain percentile gives ~80%."""
    rng = np.random.default_rng(0)
    hits = sum(
        lo <= 0 <= hi for lo, hi in (mean_ci(rng.normal(0, 1, 5), seed=i)[1] for i in range(600))
    )
    assert 0.86 <= hits / 600 <= 0.95
    assert mean_ci([0.3]) == (0.3, None)
    assert mean_ci([np.nan]) == (None, None)


def test_paired_gain_pairs_by_repetition() -> None:
    base = pd.Series([0.40, 0.35, 0.38, 0.41], index=[0, 1, 2, 3])
    transfer = pd.Series([0.37, 0.36, 0.33], index=[2, 1, 0])  # repetition 3 unfinished
    gain = paired_gain(base, transfer)
    diffs = [0.40 - 0.33, 0.35 - 0.36, 0.38 - 0.37]
    assert gain["mean"] == pytest.approx(np.mean(diffs))
    assert gain["wins"] == 2 and gain["repetitions"] == 3
    assert gain["detectable"] == (gain["ci90"][0] > 0)
    assert paired_gain(base, pd.Series([0.3], index=[9])) is None
