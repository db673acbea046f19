"""Equivalent experimental sample size: how many experimental rows n simulated rows are worth.

The baseline (no pretraining) learning curve E0(m) = D0·m^-β + C0 is fitted over the target
sizes m; the equivalent of n simulated rows is the m at which E0 reaches the error the
pretrained model achieved with n (at the reference m). Its growth rate is the slope of
log m_eq against log n. Intervals pair the b-th baseline resample with the b-th resample of the
transfer means; the two are drawn independently, which ignores the shared test splits and so
errs on the wide side.
"""

from __future__ import annotations

import numpy as np

from s2r_ray.scaling.bootstrap import interval, resample_means
from s2r_ray.scaling.estimator import PowerLawFit, ci_key, size_or_unreachable
from s2r_ray.scaling.groups import Groups


def _slope(log_n: np.ndarray, log_m: np.ndarray) -> np.ndarray:
    """Least-squares slope of log_m on log_n along the last axis, over finite entries only."""
    ok = np.isfinite(log_m)
    k = ok.sum(axis=-1)
    x = np.where(ok, log_n, 0.0)
    y = np.where(ok, log_m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xm, ym = x.sum(-1) / k, y.sum(-1) / k
        dx = np.where(ok, log_n - xm[..., None], 0.0)
        slope = (dx * (y - ym[..., None])).sum(-1) / (dx * dx).sum(-1)
    return np.where(k >= 2, slope, np.nan)


def _worth(m_eq: float, m_ref: float, n: float) -> float | str:
    """Experimental rows beyond m_ref that one of n simulated rows stands for; 'unbounded'
    where no m on the baseline curve matches."""
    return "unbounded" if np.isinf(m_eq) else float((m_eq - m_ref) / n)


def equivalent_samples(
    transfer: Groups, m_ref: float, baseline: PowerLawFit, ci: float, seed: int
) -> dict:
    """m_eq per simulated size n, its interval, what one simulated row is worth in
    experimental rows ((m_eq - m_ref) / n) with its interval, and the growth rate
    d log m_eq / d log n.

    'unreachable' means the pretrained error is below the baseline's fitted floor C0: no amount
    of experimental data alone is expected to match it.
    """
    p0, b0 = baseline.params, baseline.boot
    assert p0 is not None, "the baseline curve needs a fit"
    m_max = float(baseline.groups.n[-1])
    point = p0.size_for(transfer.means)
    log_n = np.log(transfer.n)
    out_points = [
        {
            "n": int(n),
            "mae": float(e),
            "m_eq": size_or_unreachable(m),
            "gain_factor": size_or_unreachable(m / m_ref),
            "worth_per_row": _worth(m, m_ref, n),
            "extrapolated": bool(m > m_max),
            ci_key("m_eq", ci): None,
            ci_key("worth_per_row", ci): None,
        }
        for n, e, m in zip(transfer.n, transfer.means, point, strict=True)
    ]
    with np.errstate(divide="ignore"):
        slope = float(_slope(log_n, np.log(point)))
    result = {
        "m_ref": float(m_ref),
        "baseline_curve": {
            "form": "D0*m^-beta+C0",
            "D0": float(p0.D[0]),
            "beta": float(p0.alpha[0]),
            "C0": float(p0.C[0]),
            "m_used": baseline.groups.n.astype(int).tolist(),
        },
        "points": out_points,
        "growth_rate": slope,
        ci_key("growth_rate", ci): None,
    }
    if b0 is None:
        return result
    means, _ = resample_means(transfer, b0.alpha.size, np.random.default_rng([seed, 1]))
    samples = b0.size_for(means)
    lo, hi = interval(samples, ci)
    for row, a, b in zip(out_points, lo, hi, strict=True):
        row[ci_key("m_eq", ci)] = [size_or_unreachable(a), size_or_unreachable(b)]
        row[ci_key("worth_per_row", ci)] = [_worth(v, m_ref, row["n"]) for v in (a, b)]
    with np.errstate(divide="ignore"):
        slopes = _slope(log_n, np.log(samples))
    slopes = slopes[np.isfinite(slopes)]
    if slopes.size:
        result[ci_key("growth_rate", ci)] = [float(v) for v in interval(slopes, ci)]
    return result
