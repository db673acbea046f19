"""Synthetic scaling studies with known D, α, C: the ground truth for checking intervals.

The noise imitates real studies (science.md): each repetition is one target split shared by
all sizes, so part of the noise is a per-repetition offset common to every size; the rest is
independent per cell, and its scale follows the error level (a fixed-size test set).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2r_ray.scaling.estimator import PowerLawFit, ci_key


def synthetic_study(
    rng: np.random.Generator, repetitions: int = 5, shared_max: float = 0.7
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One study of 6-8 doubling sizes; returns (cells n, repetition, mae) and the truth.

    Up to shared_max of the noise variance is the per-repetition offset (0: all independent).
    """
    sizes = int(rng.integers(6, 9))
    n = rng.choice([250, 500, 1000]) * 2.0 ** np.arange(sizes)
    alpha, C, drop = rng.uniform(0.2, 1.0), rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.5)
    D = drop * n[0] ** alpha
    curve = D * n**-alpha + C
    sd, shared = rng.uniform(0.003, 0.03), rng.uniform(0.0, shared_max)
    offset = rng.normal(0, sd * np.sqrt(shared), repetitions)
    own = rng.normal(0, sd * np.sqrt(1 - shared), (sizes, repetitions))
    own *= curve[:, None] / curve.mean()  # noise follows the error level
    mae = curve[:, None] + offset[None, :] + own
    reps = np.broadcast_to(np.arange(repetitions), mae.shape)
    table = pd.DataFrame(
        {"n": np.repeat(n, repetitions).astype(int), "repetition": reps.ravel(), "mae": mae.ravel()}
    )
    return table, {"D": D, "alpha": alpha, "C": C}


def coverage(
    studies: int,
    n_boot: int = 1000,
    ci: float = 0.9,
    seed: int = 0,
    shared_max: float = 0.7,
    inflate: bool = True,
) -> dict:
    """Share of synthetic studies whose interval covers the truth, per quantity.

    Quantities: D, alpha, C and the MAE at 10x the largest size; plus the median α width.
    inflate=False measures the plain percentile bootstrap instead of PowerLawFit's.
    """
    rng = np.random.default_rng(seed)
    hits = {"D": 0, "alpha": 0, "C": 0, "mae_10x": 0}
    widths = []
    for i in range(studies):
        table, truth = synthetic_study(rng, shared_max=shared_max)
        est = PowerLawFit(
            n_boot=n_boot, ci=ci, seed=i, extrapolate_factors=(10,), alternatives=False
        )
        est.inflate = inflate
        out = est.fit(table).to_dict()
        for name in ("D", "alpha", "C"):
            lo, hi = out["fit"][ci_key(name, ci)]
            hits[name] += lo <= truth[name] <= hi
        x = out["extrapolation"][0]
        lo, hi = x[ci_key("mae", ci)]
        hits["mae_10x"] += lo <= truth["D"] * x["n"] ** -truth["alpha"] + truth["C"] <= hi
        lo, hi = out["fit"][ci_key("alpha", ci)]
        widths.append(hi - lo)
    return {k: float(v / studies) for k, v in hits.items()} | {
        "median_alpha_width": float(np.median(widths)),
        "studies": studies,
    }
