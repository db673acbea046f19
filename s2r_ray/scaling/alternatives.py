"""Other curve forms fitted beside the paper's, each scored by AICc and by backtesting.

- "D*n^-alpha+C": the paper's form (Minami et al. 2025), the headline unless strongly beaten.
- "D*n^-alpha": a pure power law (C = 0): no transfer gap, gains continue indefinitely.
- "broken power law": one break of Caballero et al. 2022 (Broken Neural Scaling Laws),
  E = a + b·n^-c0·(1 + (n/d)^(1/f))^(-c1·f), with the sharpness f fixed at BREAK_SHARPNESS so
  it has 5 parameters (fitted only with >= 6 sizes, and its break kept inside the sizes seen).

All forms are fitted by plain weighted least squares (AICc needs a likelihood; a Huber fit has
none), so with robust=True the paper's entry here can differ slightly from the headline fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from s2r_ray.scaling.backtest import backtest, mean_abs_rel_error
from s2r_ray.scaling.groups import Groups
from s2r_ray.scaling.powerlaw import ALPHA_MAX, fit_batch, solve_dc

PAPER, PURE, BROKEN = "D*n^-alpha+C", "D*n^-alpha", "broken power law"
BREAK_SHARPNESS = 0.5
BROKEN_MIN_SIZES = 6
STRONG_DELTA_AICC = 10.0  # Burnham & Anderson: beyond 10, essentially no support
STRONG_BACKTEST_RATIO = 0.67  # and the rival's backtest error at most 2/3 of the paper form's


@dataclass(frozen=True)
class FittedForm:
    """A point fit of one form: its parameters and a predictor."""

    form: str
    params: dict[str, float]
    predict: Callable[[np.ndarray], np.ndarray]
    chi2: float  # weighted sum of squared residuals


def _power_law(n: np.ndarray, y: np.ndarray, w: np.ndarray, with_c: bool) -> FittedForm:
    p = fit_batch(n, y[None], w[None], with_c=with_c)
    params = {"D": float(p.D[0]), "alpha": float(p.alpha[0])}
    if with_c:
        params["C"] = float(p.C[0])

    def predict(m: np.ndarray) -> np.ndarray:
        return p.predict(np.asarray(m, float))[0]

    chi2 = float((w * (y - predict(n)) ** 2).sum())
    return FittedForm(PAPER if with_c else PURE, params, predict, chi2)


def _break_basis(n: np.ndarray, c0: np.ndarray, c_end: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """n^-c0·(1+(n/d)^(1/f))^(-(c_end-c0)·f) for parameter vectors (k,) against n: (k, S)."""
    f = BREAK_SHARPNESS
    ln = np.log(n)[None, :]
    return np.exp(
        -c0[:, None] * ln - (c_end - c0)[:, None] * f * np.logaddexp(0, (ln - log_d[:, None]) / f)
    )


def _broken(n: np.ndarray, y: np.ndarray, w: np.ndarray) -> FittedForm:
    """Variable projection again: for fixed slopes and break, (b, a) is a 2-unknown NNLS."""
    # n is rescaled to n/n_min so the basis stays O(1)
    nn = n / n[0]

    def sse(c0: np.ndarray, c_end: np.ndarray, log_d: np.ndarray):
        g = _break_basis(nn, c0, c_end, log_d)
        wg = w * g
        b, a = solve_dc(w.sum(), wg.sum(1), (w * y).sum(), (wg * g).sum(1), (wg * y).sum(1), True)
        return b, a, (w * (y - b[:, None] * g - a[:, None]) ** 2).sum(1)

    def objective(v: np.ndarray) -> float:
        return float(sse(*np.asarray(v, float)[:, None])[2][0])

    # grid over (first slope, last slope, break position), then a bounded local polish
    slopes = np.linspace(0, ALPHA_MAX, 31)
    breaks = np.linspace(0, np.log(nn[-1]), 12)
    grid = np.stack([v.ravel() for v in np.meshgrid(slopes, slopes, breaks, indexing="ij")])
    x0 = grid[:, int(np.argmin(sse(*grid)[2]))]
    res = minimize(
        objective,
        x0=x0,
        method="Powell",
        bounds=[(0, ALPHA_MAX), (0, ALPHA_MAX), (0, float(np.log(nn[-1])))],
    )
    v = res.x if res.fun <= objective(x0) else x0
    b, a, chi2 = sse(*v[:, None])
    params = {
        "a": float(a[0]),
        "b": float(b[0] * n[0] ** v[0]),
        "c0": float(v[0]),
        "c1": float(v[1] - v[0]),
        "d": float(n[0] * np.exp(v[2])),
        "f": BREAK_SHARPNESS,
    }

    def predict(m: np.ndarray) -> np.ndarray:
        m = np.atleast_1d(np.asarray(m, float)) / n[0]
        return b[0] * _break_basis(m, *v[:, None])[0] + a[0]

    return FittedForm(BROKEN, params, predict, float(chi2[0]))


FORMS: dict[str, tuple[int, int, Callable[[np.ndarray, np.ndarray, np.ndarray], FittedForm]]] = {
    # name: (parameters, fewest sizes to fit, fitter)
    PAPER: (3, 3, lambda n, y, w: _power_law(n, y, w, True)),
    PURE: (2, 3, lambda n, y, w: _power_law(n, y, w, False)),
    BROKEN: (5, BROKEN_MIN_SIZES, _broken),
}


def aicc(chi2: float, sizes: int, k: int, known_variance: bool) -> float | None:
    """AICc; None where the small-sample correction is undefined (sizes <= k + 1).

    With variances known from repetitions, -2 log L is the weighted χ²; without them the noise
    scale is one more fitted parameter and -2 log L = S·ln(RSS/S).
    """
    if not known_variance:
        k += 1
        chi2 = sizes * np.log(max(chi2, 1e-300) / sizes)
    if sizes <= k + 1:
        return None
    return float(chi2 + 2 * k + 2 * k * (k + 1) / (sizes - k - 1))


def compare_forms(
    groups: Groups, w: np.ndarray, known_variance: bool, factors: tuple[float, ...]
) -> list[dict]:
    """Fit every form the sizes allow; score by AICc and backtest; flag the headline.

    Each rival's backtest error is set beside the paper form's on the same k (the rival may
    need more sizes), so the comparison is like for like. best_extrapolating is the form with
    the lowest such ratio; the paper's form stays the headline unless a rival beats it on both
    AICc and backtest by a wide margin (STRONG_DELTA_AICC, STRONG_BACKTEST_RATIO).
    """
    n, y, s = groups.n, groups.means, groups.size_count
    x = n[-1] * np.asarray(factors, float)
    rows, tests = [], []
    for name, (k, min_sizes, fit) in FORMS.items():
        if s < min_sizes:
            continue
        fitted = fit(n, y, w)
        test = backtest(groups, lambda a, b, c, fit=fit: fit(a, b, c).predict, min_sizes)
        tests.append(test)
        rows.append(
            {
                "form": name,
                "params": fitted.params,
                "n_params": k,
                "chi2": fitted.chi2,
                "aicc": aicc(fitted.chi2, s, k, known_variance),
                "backtest_rel_error": mean_abs_rel_error(test, [e["k"] for e in test]),
                "backtest_ks": [e["k"] for e in test],
                "extrapolation": [
                    {"factor": float(f), "n": float(v), "mae": float(p)}
                    for f, v, p in zip(factors, x, fitted.predict(x), strict=True)
                ],
            }
        )
    paper, ratios = rows[0], {PAPER: 1.0}
    for row in rows:
        row["paper_backtest_rel_error"] = mean_abs_rel_error(tests[0], row["backtest_ks"])
    for row in rows[1:]:
        if row["backtest_ks"] and row["paper_backtest_rel_error"]:
            ratios[row["form"]] = row["backtest_rel_error"] / row["paper_backtest_rel_error"]
    best_aicc = min((r["aicc"] for r in rows if r["aicc"] is not None), default=None)
    best = min(ratios, key=ratios.get) if paper["backtest_ks"] else None
    strong = [
        r["form"]
        for r in rows[1:]
        if r["form"] in ratios
        and ratios[r["form"]] <= STRONG_BACKTEST_RATIO
        and None not in (r["aicc"], paper["aicc"])
        and paper["aicc"] - r["aicc"] >= STRONG_DELTA_AICC
    ]
    headline = min(strong, key=ratios.get) if strong else PAPER
    for row in rows:
        row["delta_aicc"] = None if row["aicc"] is None else row["aicc"] - best_aicc
        row["best_extrapolating"] = row["form"] == best
        row["headline"] = row["form"] == headline
    return rows
