"""What the target costs and what the database is worth, from the steering posterior.

price_target: rows needed for a target MAE (with interval), rows still to simulate beyond the
database, and the compute to confirm the target by running that size. database_value: the MAE
change from +10% and from +10,000 rows at the database's current size. Both are JSON-able.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from s2r_ray.scaling.bootstrap import interval
from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.estimator import size_or_unreachable
from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.posterior import Posterior
from s2r_ray.scaling.powerlaw import Params


def _summary(q: np.ndarray, ci: float, sizes: bool = False) -> dict:
    lo, hi = interval(q, ci)
    point = float(np.median(q))
    if sizes:
        point, lo, hi = (size_or_unreachable(v) for v in (point, lo, hi))
    return {"point": point, f"ci{round(100 * ci)}": [lo, hi]}


def price_target(
    post: Posterior,
    target_mae: float,
    database_rows: int,
    cost: CostModel,
    repetitions: int,
    ci: float = 0.9,
    seed: int = 0,
) -> dict:
    """Rows for target_mae, rows beyond the database, seconds to confirm it at that n."""
    d, a, c = post.samples(seed)
    n = Params(d, a, c, post.n_ref).size_for(target_mae)
    reachable = np.isfinite(n)
    confirm = repetitions * cost(np.where(reachable, n, np.nan))
    return json_safe(
        {
            "target_mae": target_mae,
            "rows_needed": _summary(n, ci, sizes=True),
            "rows_to_simulate": _summary(np.maximum(n - database_rows, 0), ci, sizes=True),
            "p_unreachable": float(np.mean(~reachable)),
            "confirm_seconds": _summary(np.where(reachable, confirm, np.inf), ci, sizes=True),
            "confirm_repetitions": repetitions,
            "cost_model": cost.to_dict(),
        }
    )


def database_value(
    post: Posterior,
    database_rows: int,
    ci: float = 0.9,
    seed: int = 0,
    m_eq: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """MAE change (negative: better) from +10% and from +10,000 rows at the database's size;
    with m_eq (the no-pretraining curve solved for m), also the experimental rows that change
    is worth (the baseline curve taken as known: its own uncertainty is not in the interval)."""
    d, a, c = post.samples(seed)
    p = Params(d, a, c, post.n_ref)
    now = p.predict(np.float64(database_rows))
    after = {
        "per_10_percent": p.predict(np.float64(1.1 * database_rows)),
        "per_10000_rows": p.predict(np.float64(database_rows + 10_000)),
    }
    out = {"database_rows": database_rows, "mae_now": _summary(now, ci)}
    out |= {k: _summary(v - now, ci) for k, v in after.items()}
    if m_eq is not None:
        with np.errstate(invalid="ignore"):  # inf - inf: both below the baseline's floor
            out["in_experimental_rows"] = {
                k: _summary(m_eq(v) - m_eq(now), ci, sizes=True) for k, v in after.items()
            }
    return json_safe(out)
