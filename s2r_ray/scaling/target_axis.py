"""The target-size axis: studies that vary m (experimental training rows) as well as n.

Reports the scaling in n at each m, the learning curve in m at each n (n = 0: no pretraining),
and, from the baseline's learning curve, the equivalent experimental sample size.
"""

from __future__ import annotations

import pandas as pd

from s2r_ray.scaling import diagnostics as dg
from s2r_ray.scaling.equivalent import equivalent_samples
from s2r_ray.scaling.estimator import PowerLawFit, ci_key
from s2r_ray.scaling.groups import group_repetitions


def _brief(est: PowerLawFit, ci: float) -> dict:
    """The parameters and intervals of a nested fit, without the repeated method notes."""
    out = est.to_dict()
    keys = ["D", "alpha", "C", *(ci_key(k, ci) for k in ("D", "alpha", "C")), "sizes_used"]
    return {k: out["fit"][k] for k in keys} | {"diagnostics": out["diagnostics"]}


def m_axis(
    cells: pd.DataFrame, *, n_boot: int, ci: float, seed: int
) -> tuple[dict | None, dict | None, list[dg.Diagnostic]]:
    """(target_axis, equivalent_samples, diagnostics) from cells with columns n, m, mae.

    Either part is None when the study cannot support it; the diagnostics say why.
    """
    if "m" not in cells.columns or cells["m"].nunique() < 2:
        return None, None, [dg.no_target_axis()]

    def fit(rows: pd.DataFrame) -> PowerLawFit:
        return PowerLawFit(
            n_boot=n_boot, ci=ci, seed=seed, extrapolate_factors=(), alternatives=False
        ).fit(rows)

    transfer = cells[cells["n"] > 0]
    m_values = sorted(cells["m"].unique())
    n_values = sorted(cells["n"].unique())
    in_m = {
        n: fit(rows.assign(n=rows["m"]).drop(columns="m"))
        for n, rows in cells.groupby("n", sort=True)
    }
    axis = {
        "m_values": [float(m) for m in m_values],
        "n_values": [int(n) for n in n_values],
        "scaling_in_n": [
            {"m": float(m), **_brief(fit(transfer[transfer["m"] == m].drop(columns="m")), ci)}
            for m in m_values
        ],
        "learning_curves": [
            {"n": int(n), "pretrained": bool(n > 0), **_brief(est, ci)} for n, est in in_m.items()
        ],
    }
    baseline = in_m.get(0)
    if baseline is None or baseline.params is None:
        found = 0 if baseline is None else baseline.groups.size_count
        return axis, None, [dg.no_equivalent_samples(found)]
    m_ref = max(m_values)
    groups = group_repetitions(transfer[transfer["m"] == m_ref])
    return axis, equivalent_samples(groups, m_ref, baseline, ci, seed), []
