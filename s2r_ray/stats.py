"""Small-sample intervals for a mean over repetitions, and gains paired on the same repetition.

With R = 5 repetitions a plain percentile bootstrap of the mean covers a 90% truth only ~80%
of the time: resampling reproduces the spread too narrowly (by sqrt((R-1)/R)) and with normal
rather than Student-t tails. mean_ci uses Hesterberg's expanded percentile interval (The
American Statistician 69, 371 (2015)): deviations rescaled by sqrt(R/(R-1)) and the percentile
levels widened to the t quantile with R-1 degrees of freedom. Two or three values cannot
produce such tails by resampling at all, so the interval is never narrower than the Student-t
one (on normal data: 89-91% coverage at R = 2, 3, 5 and 10, against 60-88% without that floor).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm, t

from s2r_ray.scaling import ci_key
from s2r_ray.scaling.bootstrap import interval, resample_means
from s2r_ray.scaling.groups import Groups


def mean_ci(
    values: np.ndarray, ci: float = 0.9, n_boot: int = 1000, seed: int = 0
) -> tuple[float | None, list[float] | None]:
    """(mean, [lo, hi]) of the finite values; the interval is None with fewer than 2."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    if v.size < 2:
        return float(v[0]), None
    groups = Groups(np.array([1.0]), v[None, :], np.array([v.size]))
    means, _ = resample_means(groups, n_boot, np.random.default_rng(seed))
    q = t.ppf((1 - ci) / 2, v.size - 1)
    lo, hi = interval(means[:, 0], 1 - 2 * norm.cdf(q))  # a normal tail as wide as Student's t
    half = -q * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), [float(min(lo, v.mean() - half)), float(max(hi, v.mean() + half))]


def paired_gain(
    baseline: pd.Series, transfer: pd.Series, ci: float = 0.9, n_boot: int = 1000, seed: int = 0
) -> dict | None:
    """Baseline MAE - transfer MAE on the repetitions both have (indexed by repetition).

    Pairing removes the split-to-split noise both share, which is often larger than the gain
    itself. detectable: the interval excludes 0 (a gain, or with a negative mean, a loss).
    """
    common = baseline.index.intersection(transfer.index)
    if common.empty:
        return None
    gains = (baseline.loc[common] - transfer.loc[common]).to_numpy(float)
    mean, bounds = mean_ci(gains, ci, n_boot, seed)
    return {
        "mean": mean,
        ci_key("", ci): bounds,
        "wins": int((gains > 0).sum()),
        "repetitions": int(gains.size),
        "detectable": bool(bounds is not None and (bounds[0] > 0 or bounds[1] < 0)),
    }
