"""PowerLawFit: the one object the orchestration and the report use to fit a scaling study."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import chi2 as chi2_dist

from s2r_ray.scaling import diagnostics as dg
from s2r_ray.scaling.alternatives import PAPER, compare_forms
from s2r_ray.scaling.backtest import Predictor, backtest
from s2r_ray.scaling.bootstrap import deviations, interval, resample_means
from s2r_ray.scaling.groups import Groups, fit_weights, group_repetitions
from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.powerlaw import ALPHA_MAX, ALPHA_MIN, Params, fit_batch

CURVE_POINTS = 100
POOR_FIT_P = 1e-3  # χ² this improbable under the repetition noise: the form misses the data

UNREACHABLE = "unreachable"
BOOTSTRAP_METHOD = (
    "percentile bootstrap over repetitions within each size, deviations rescaled by "
    "sqrt(R/(R-1)) so resampled means have the unbiased variance"
)
WEIGHTS = {  # by whether the repetitions' spread gives a noise estimate
    False: "equal per repetition (no spread between repetitions to estimate noise)",
    True: "inverse variance of each size's repetition mean, the variance floored at the "
    "pooled within-size variance / R",
}


def size_or_unreachable(n: float) -> float | str:
    """A size for JSON: infinite (the curve never gets there) becomes 'unreachable'."""
    return UNREACHABLE if np.isinf(n) else float(n)


def ci_key(name: str, ci: float) -> str:
    """'alpha', 0.9 -> 'alpha_ci90' ('' -> 'ci90'): the interval's level is part of its key."""
    return f"{name}_ci{round(100 * ci)}".lstrip("_")


class PowerLawFit:
    """Fit E(n) = D·n^-α + C with bootstrap intervals, alternatives, backtest and diagnostics.

    fit() never raises on thin or odd data: what it could not do is said in the diagnostics.
    planned_repetitions (default: the most any size has; per size in a steered study) flags
    sizes still missing repetitions.
    alternatives=False skips the rival forms (the slow part) for nested and repeated fits.
    """

    #: rescale resampled deviations by sqrt(R/(R-1)) (see bootstrap.py); switched off only to
    #: measure what a plain bootstrap would give (benchmarks/scaling_coverage.py)
    inflate: bool = True

    def __init__(
        self,
        n_boot: int = 1000,
        ci: float = 0.9,
        seed: int = 0,
        robust: bool = False,
        extrapolate_factors: tuple[float, ...] = (10, 100),
        target_mae: float | None = None,
        planned_repetitions: int | Mapping[int, int] | None = None,
        alternatives: bool = True,
    ) -> None:
        self.n_boot, self.ci, self.seed, self.robust = n_boot, ci, seed, robust
        self.alternatives = alternatives
        self.extrapolate_factors = tuple(float(f) for f in extrapolate_factors)
        self.target_mae = target_mae
        self.planned_repetitions = planned_repetitions
        self._reset()

    def _reset(self) -> None:
        self.groups: Groups | None = None
        self.params: Params | None = None
        self.boot: Params | None = None
        self.m: float | None = None
        self.diagnostics: list[dg.Diagnostic] = []
        self.intervals: dict[str, tuple[float, float] | None] = {}
        self._weights: np.ndarray | None = None
        self._chi2: float | None = None
        self._known_variance = False
        self._backtest: list[dict] = []
        self._alternatives: list[dict] = []

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, table: pd.DataFrame, m: float | None = None) -> PowerLawFit:
        """Fit one row per repetition with columns n, mae (optionally m: the largest, or m=...)."""
        self._reset()
        missing = {"n", "mae"} - set(table.columns)
        if missing:
            raise ValueError(f"table lacks column(s) {sorted(missing)}; needs n and mae")
        if "m" in table.columns and not table["m"].isna().all():
            self.m = float(table["m"].max() if m is None else m)
            table = table[table["m"] == self.m]
        n = pd.to_numeric(table["n"], errors="coerce")
        mae = pd.to_numeric(table["mae"], errors="coerce")
        finite = np.isfinite(n) & np.isfinite(mae)
        if (~finite).sum():
            self.diagnostics.append(dg.dropped_rows(int((~finite).sum()), "non-finite n or mae"))
        if (finite & (n <= 0)).sum():
            self.diagnostics.append(dg.baseline_rows_ignored(int((finite & (n <= 0)).sum())))
        keep = finite & (n > 0)
        groups = group_repetitions(pd.DataFrame({"n": n[keep], "mae": mae[keep]}))
        self.groups = groups
        if groups.size_count < 3:
            self.diagnostics.append(dg.too_few_sizes(groups.size_count))
            return self
        planned = self.planned_repetitions or int(groups.counts.max())
        self.diagnostics += dg.missing_repetitions(groups.n, groups.counts, planned)
        w = fit_weights(groups.var_mean, groups.counts)[0]
        spread = deviations(groups)
        self._weights, self._known_variance = w, bool(np.any(spread != 0))
        self.params = fit_batch(groups.n, groups.means[None], w[None], robust=self.robust)
        self._chi2 = float((w * (groups.means - self.params.predict(groups.n)[0]) ** 2).sum())
        self.boot = self._bootstrap(spread)
        self.intervals = self._parameter_intervals()
        self._backtest = backtest(groups, self._predictor, 3)
        if self.alternatives:
            self._alternatives = compare_forms(
                groups, w, self._known_variance, self.extrapolate_factors
            )
        self.diagnostics += self._fit_diagnostics()
        return self

    def _predictor(self, n: np.ndarray, y: np.ndarray, w: np.ndarray) -> Predictor:
        """The headline estimator (robust or not) as a fitter for its own backtest."""
        p = fit_batch(n, y[None], w[None], robust=self.robust)
        return lambda x: p.predict(x)[0]

    def _bootstrap(self, spread: np.ndarray) -> Params | None:
        """Refit every resample at once; None when there is no noise estimate to resample."""
        groups = self.groups
        assert groups is not None and self.params is not None
        pool = spread
        if not (groups.counts > 1).any():
            dof = groups.size_count - 3
            self.diagnostics.append(dg.single_repetition(intervals=dof > 0))
            if dof < 1:
                return None
            resid = groups.means - self.params.predict(groups.n)[0]
            pool = resid * np.sqrt(groups.size_count / dof)
        rng = np.random.default_rng(self.seed)
        means, var_mean = resample_means(groups, self.n_boot, rng, pool, self.inflate)
        w = fit_weights(var_mean, groups.counts)
        return fit_batch(groups.n, means, w, robust=self.robust)

    def _fit_diagnostics(self) -> list[dg.Diagnostic]:
        groups, p = self.groups, self.params
        assert groups is not None and p is not None and self._weights is not None
        c = float(p.C[0])
        out = dg.parameter_checks(
            float(p.D_ref[0]),
            float(p.alpha[0]),
            c,
            self.intervals["alpha"],
            self.intervals["C"],
            scale=float(groups.means.max()),
        )
        out += dg.rising_curve(groups.n, groups.means, self._weights, self._known_variance)
        dof = groups.size_count - 3
        if self._known_variance and dof > 0 and chi2_dist.sf(self._chi2, dof) < POOR_FIT_P:
            out.append(dg.poor_fit(self._chi2, dof))
        headline = next((a for a in self._alternatives if a["headline"]), None)
        if headline is not None and headline["form"] != PAPER:
            out.append(dg.paper_form_disfavoured(headline, self._alternatives[0]["aicc"]))
        if self.target_mae is not None and self.target_mae <= c:
            out.append(dg.target_unreachable(self.target_mae, c))
        return out

    # ---- queries -------------------------------------------------------------------------

    def _require_fit(self) -> Params:
        if self.params is None:
            raise RuntimeError("no fit: fewer than 3 sizes with finished repetitions")
        return self.params

    def _parameter_intervals(self) -> dict[str, tuple[float, float] | None]:
        """Percentile intervals of D, α, C over the resamples.

        A resample fitted flat (D = 0) says nothing about α: it counts as α = ALPHA_MIN for the
        lower end and ALPHA_MAX for the upper, so a curve that is often flat gets the wide
        α interval it deserves instead of a falsely tight one at the grid's edge.
        """
        b = self.boot
        if b is None:
            return {"D": None, "alpha": None, "C": None}
        out = {k: tuple(map(float, interval(v, self.ci))) for k, v in (("D", b.D), ("C", b.C))}
        flat = b.D_ref <= 0
        lo = interval(np.where(flat, ALPHA_MIN, b.alpha), self.ci)[0]
        hi = interval(np.where(flat, ALPHA_MAX, b.alpha), self.ci)[1]
        out["alpha"] = (float(lo), float(hi))
        return out

    def predict(self, n: np.ndarray) -> np.ndarray:
        """Fitted MAE at sizes n (any shape)."""
        return self._require_fit().predict(np.asarray(n, float))[0]

    def n_for_target(self, mae: float) -> float | str:
        """Simulated rows needed to reach mae, or 'unreachable' when mae <= C."""
        return size_or_unreachable(self._require_fit().size_for(mae)[0])

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-safe result (no numpy types, None for anything unknown or infinite).

        - fit: form, D, alpha (None when the fit is flat), C, their intervals, sizes_used,
          repetitions, m, n_boot, ci, seed, robust, weights, bootstrap, chi2, dof.
        - extrapolation: [{factor, n, mae, mae_ci90}] at factor x the largest size.
        - n_for_target: {target, n, n_ci90, p_unreachable} ('unreachable' where C >= target),
          or None without a target.
        - backtest: [{k, n_fit_max, points: [{n, mae, predicted, rel_error}]}].
        - diagnostics: [{code, message}].
        - alternatives: [{form, params, n_params, chi2, aicc, delta_aicc, backtest_rel_error,
          backtest_ks, paper_backtest_rel_error, extrapolation, best_extrapolating, headline}].
        - curve: {n, mae, lo, hi} on a log grid up to the largest extrapolation, or None.

        Intervals are central percentile intervals at level ci, keyed '<name>_ci90' for 0.9.
        """
        out = {
            "fit": self._fit_dict(),
            "extrapolation": [],
            "n_for_target": None,
            "backtest": self._backtest,
            "diagnostics": self.diagnostics,
            "alternatives": self._alternatives,
            "curve": None,
        }
        if self.params is not None:
            out["extrapolation"] = self._extrapolation()
            top = self.groups.n[-1] * max(self.extrapolate_factors, default=1.0)
            n = np.geomspace(self.groups.n[0], max(top, self.groups.n[-1]), CURVE_POINTS)
            point, lo, hi = self._with_ci(n)
            out["curve"] = {"n": n, "mae": point, "lo": lo, "hi": hi}
            if self.target_mae is not None:
                out["n_for_target"] = self._target()
        return json_safe(out)

    def _fit_dict(self) -> dict:
        g, p = self.groups, self.params
        out = {
            "form": PAPER,
            **{name: None for name in ("D", "alpha", "C")},
            **{ci_key(name, self.ci): None for name in ("D", "alpha", "C")},
            "sizes_used": [] if g is None else g.n.astype(int).tolist(),
            "repetitions": [] if g is None else g.counts.tolist(),
            "m": self.m,
            "n_boot": self.n_boot if self.boot is not None else 0,
            "ci": self.ci,
            "seed": self.seed,
            "robust": self.robust,
            "weights": None if self._weights is None else WEIGHTS[self._known_variance],
            "bootstrap": BOOTSTRAP_METHOD,
        }
        if p is None:
            return out
        alpha = float(p.alpha[0]) if p.D_ref[0] > 0 else None  # a flat fit (D = 0): any α fits
        out.update(D=float(p.D[0]), alpha=alpha, C=float(p.C[0]))
        out |= {ci_key(name, self.ci): bounds for name, bounds in self.intervals.items()}
        out.update(chi2=self._chi2, dof=g.size_count - 3)
        return out

    def _with_ci(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        point = self.predict(n)
        if self.boot is None:
            return point, None, None
        lo, hi = interval(self.boot.predict(n), self.ci)
        return point, lo, hi

    def _extrapolation(self) -> list[dict]:
        n = self.groups.n[-1] * np.asarray(self.extrapolate_factors, float)
        point, lo, hi = self._with_ci(n)
        return [
            {
                "factor": f,
                "n": float(x),
                "mae": float(v),
                ci_key("mae", self.ci): None if lo is None else [float(lo[i]), float(hi[i])],
            }
            for i, (f, x, v) in enumerate(zip(self.extrapolate_factors, n, point, strict=True))
        ]

    def _target(self) -> dict:
        t = float(self.target_mae)
        n = self.n_for_target(t)
        out = {"target": t, "n": n, ci_key("n", self.ci): None, "p_unreachable": None}
        if self.boot is not None:
            samples = self.boot.size_for(t)
            lo, hi = interval(samples, self.ci)
            out[ci_key("n", self.ci)] = [size_or_unreachable(lo), size_or_unreachable(hi)]
            out["p_unreachable"] = float(np.mean(t <= self.boot.C))
        return out
