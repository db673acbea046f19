"""Backtesting: fit on the smallest k sizes, predict the larger ones, compare with what was seen.

The only direct evidence of how well a form extrapolates is how well it did on sizes it had
not seen; AICc only says how well it fits the sizes it had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from s2r_ray.scaling.groups import Groups, fit_weights

Predictor = Callable[[np.ndarray], np.ndarray]


def backtest(
    groups: Groups, fitter: Callable[[np.ndarray, np.ndarray, np.ndarray], Predictor], k_min: int
) -> list[dict]:
    """Per k (k_min <= k < sizes): signed relative error (predicted - seen) / seen per held-out n.

    fitter(n, mae, weights) fits on the k smallest sizes and returns a predictor.
    """
    out = []
    means = groups.means
    for k in range(max(k_min, 3), groups.size_count):
        head = groups.head(k)
        predict = fitter(head.n, head.means, fit_weights(head.var_mean, head.counts)[0])
        pred = predict(groups.n[k:])
        out.append(
            {
                "k": k,
                "n_fit_max": int(groups.n[k - 1]),
                "points": [
                    {
                        "n": int(n),
                        "mae": float(m),
                        "predicted": float(p),
                        "rel_error": float((p - m) / m),
                    }
                    for n, m, p in zip(groups.n[k:], means[k:], pred, strict=True)
                ],
            }
        )
    return out


def mean_abs_rel_error(entries: list[dict], ks: Iterable[int]) -> float | None:
    """Mean |relative error| over the held-out sizes of the chosen k, each k weighted equally."""
    keep = set(ks)
    per_k = [np.mean([abs(p["rel_error"]) for p in e["points"]]) for e in entries if e["k"] in keep]
    return float(np.mean(per_k)) if per_k else None
