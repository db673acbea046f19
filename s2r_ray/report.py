"""The study report: report.json and its plots, built from one row per finished cell.

report.json keys (stable; every number JSON-safe, None where unknown):

- ``study``, ``status``, ``property``, ``units``: as passed in.
- ``sizes``: one entry per pretraining size n > 0 (per (n, m) when the study varies m):
  ``n``, ``m`` (when the cells have an m column), ``repetitions`` (finished),
  ``planned_repetitions``, ``test_mae_mean``, ``test_mae_ci90`` [lo, hi] (90% interval of the
  mean over repetitions: expanded-percentile bootstrap, see ``s2r_ray.stats``),
  ``test_rmse_mean``, ``trials`` (mean tuning trials per cell), ``paired_gain``
  {``mean``, ``ci90``, ``wins``, ``repetitions``, ``detectable``} (baseline MAE − transfer MAE on
  the same repetition and m; detectable: the interval excludes 0; None without a baseline),
  ``source_val_mae`` (mean pretraining error on the source hold-out), ``pretrain_converged``
  (False when any repetition stopped on the step cap), ``zero_shot_mae`` (pretrained model on
  the target test set before fine-tuning), ``single_mae_mean`` (one model's MAE when ``mae`` is
  an ensemble's). A column the cells lack gives None.
- ``baseline``: the same keys for n = 0 (no pretraining) at the largest m; None without one.
- ``baseline_by_m``: the baseline at every m (only when m varies).
- ``references``: {name: MAE} — the references passed in, plus ``simulation_alone`` (the
  computed value used directly as the prediction) when the cells carry ``reference_mae``.
- ``fit``, ``extrapolation``, ``n_for_target``, ``backtest``, ``diagnostics``,
  ``alternatives``, ``curve``: ``PowerLawFit.to_dict()`` of the transfer sizes at the largest
  m (see ``s2r_ray.scaling.estimator``); ``diagnostics`` also carries the report's own
  findings (dropped rows, missing baseline, unconverged pretraining, undetectable gains, no m
  axis).
- ``target_axis``, ``equivalent_samples``: only when the study varies m
  (``s2r_ray.scaling.target_axis``, ``s2r_ray.scaling.equivalent``); the latter is None when
  the baseline has fewer than 3 target sizes. Each of its ``points`` carries ``n``, ``mae``,
  ``m_eq`` (the baseline's equivalent experimental size, 'unreachable' below its floor C0),
  ``gain_factor`` (m_eq / m_ref), ``worth_per_row`` ((m_eq − m_ref) / n: the experimental rows
  one simulated row is worth, 'unbounded' where m_eq is unreachable), ``extrapolated``, and
  the intervals ``m_eq_ci90`` and ``worth_per_row_ci90``.
- anything in ``extra`` (timings, counts), merged last.
- ``steering``: only in a steered study (``s2r_ray.steer.section``): ``goal``, ``precision``,
  ``budget`` (asked, spent, left), ``decisions`` (each: ``index``, ``when``, ``action``
  measure/stop, ``n``, ``repetitions``, ``first_repetition``, ``reason``, ``before`` and the
  predicted ``after`` interval of the goal, ``cost_seconds``, ``cost_model``), ``stop_reason``
  (precise, budget, no_gain, grid_done; None while it runs), ``goal_interval`` now,
  ``cost_model`` (a + b·n^c seconds per (n, repetition), with the measured ``points``),
  ``price`` (rows for ``target_mae``, rows beyond the pool, seconds to confirm) and
  ``database_value`` (MAE change per +10% and per +10,000 rows at the pool's size).

The report is computed here once; the terminal text, the MLflow notes, report.html and the
plots (``s2r_ray.render``) only format it. Pure: no Ray, no MLflow, so `s2r report`, `s2r fit`
and `s2r status` run without either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from s2r_ray import steer
from s2r_ray.folder import StudyFolder
from s2r_ray.scaling import PowerLawFit, json_safe, m_axis
from s2r_ray.scaling import diagnostics as dg
from s2r_ray.stats import mean_ci, paired_gain

if TYPE_CHECKING:
    from s2r_ray.config import StudyConfig
    from s2r_ray.folder import StudyFolder

REQUIRED = ("n", "repetition", "mae")
MEANS = {  # optional column -> size key; each reported as its mean over repetitions
    "rmse": "test_rmse_mean",
    "trials": "trials",
    "source_val_mae": "source_val_mae",
    "zero_shot_mae": "zero_shot_mae",
    "single_mae": "single_mae_mean",
}
CI = 0.9


def _clean(cells: pd.DataFrame) -> tuple[pd.DataFrame, list[dg.Diagnostic]]:
    """Required columns present; rows with a non-finite n, m or mae dropped, and said so."""
    if missing := [c for c in REQUIRED if c not in cells.columns]:
        raise ValueError(f"cells lack column(s) {missing}; need one row per cell with {REQUIRED}")
    cells = cells.copy()
    if "m" in cells.columns and cells["m"].isna().all():
        cells = cells.drop(columns="m")  # a study without a target-size axis
    keys = ["n", "mae"] + (["m"] if "m" in cells.columns else [])
    for c in keys:
        cells[c] = pd.to_numeric(cells[c], errors="coerce")
    finite = np.isfinite(cells[keys].to_numpy(float)).all(axis=1)
    dropped = int((~finite).sum())
    notes = [dg.dropped_rows(dropped, f"non-finite {' or '.join(keys)}")] if dropped else []
    return cells[finite], notes


def _size_entry(
    rows: pd.DataFrame, baseline: pd.DataFrame | None, planned: int | None, n_boot: int, seed: int
) -> dict:
    """Summary of one (n, m) cell group; paired against the baseline rows of the same m."""
    mean, ci = mean_ci(rows["mae"].to_numpy(), CI, n_boot, seed)
    entry = {"n": int(rows["n"].iloc[0])}
    if "m" in rows.columns:
        entry["m"] = float(rows["m"].iloc[0])
    entry |= {
        "repetitions": int(rows["repetition"].nunique()),
        "planned_repetitions": planned,
        "test_mae_mean": mean,
        "test_mae_ci90": ci,
    }
    for col, key in MEANS.items():
        entry[key] = float(rows[col].mean()) if col in rows.columns else None
    entry["pretrain_converged"] = (
        bool(rows["pretrain_converged"].astype(bool).all())
        if "pretrain_converged" in rows.columns
        else None
    )
    by_rep = rows.groupby("repetition")["mae"].mean()
    entry["paired_gain"] = (
        None
        if baseline is None or entry["n"] == 0
        else paired_gain(baseline.groupby("repetition")["mae"].mean(), by_rep, CI, n_boot, seed)
    )
    return entry


def _references(cells: pd.DataFrame, given: dict[str, float] | None) -> dict[str, float]:
    refs = dict(given or {})
    if "reference_mae" in cells.columns:
        # one value per test split: average within a repetition first, then across them
        per_rep = cells.groupby("repetition")["reference_mae"].mean().dropna()
        if not per_rep.empty:
            refs["simulation_alone"] = float(per_rep.mean())
    return refs


def _report_diagnostics(sizes: list[dict], baseline: dict | None) -> list[dg.Diagnostic]:
    """Findings about the cells themselves: convergence, baseline, gains."""
    out = []
    capped = [s["n"] for s in sizes if s["pretrain_converged"] is False]
    if capped:
        out.append(dg.pretrain_not_converged(capped))
    if baseline is None:
        return [*out, dg.no_baseline()]
    gains = [(s["n"], s["paired_gain"]) for s in sizes if s["paired_gain"] is not None]
    if gains and not any(g["detectable"] for _, g in gains):
        out.append(dg.gain_not_detectable())
    losses = [n for n, g in gains if g["detectable"] and g["mean"] < 0]
    if losses:
        out.append(dg.negative_transfer(losses))
    return out


def build_report(
    cells: pd.DataFrame,
    *,
    study: str,
    status: str,
    planned_repetitions: int | Mapping[int, int] | None = None,
    target_mae: float | None = None,
    extrapolate_factors: tuple[float, ...] = (10, 100),
    n_boot: int = 1000,
    seed: int = 0,
    property_name: str = "",
    units: str = "",
    references: dict[str, float] | None = None,
    extra: dict | None = None,
) -> dict:
    """The report dict (keys in the module docstring) from one row per finished cell."""
    cells, notes = _clean(cells)
    has_m = "m" in cells.columns and not cells.empty
    m_ref = float(cells["m"].max()) if has_m else None
    groups = ["n", "m"] if has_m else ["n"]

    def baseline_at(m: float | None) -> pd.DataFrame | None:
        rows = cells[(cells["n"] == 0) & ((cells["m"] == m) if has_m else True)]
        return None if rows.empty else rows

    def entry(rows: pd.DataFrame) -> dict:
        m = float(rows["m"].iloc[0]) if has_m else None
        planned = planned_repetitions
        if isinstance(planned, Mapping):
            planned = planned.get(int(rows["n"].iloc[0]))
        return _size_entry(rows, baseline_at(m), planned, n_boot, seed)

    transfer = cells[cells["n"] > 0]
    sizes = [entry(rows) for _, rows in transfer.groupby(groups, sort=True)]
    base_rows = baseline_at(m_ref)
    baseline = None if base_rows is None else entry(base_rows)
    report: dict = {
        "study": study,
        "status": status,
        "property": property_name,
        "units": units,
        "sizes": sizes,
        "baseline": baseline,
    }
    m_varies = has_m and cells["m"].nunique() > 1
    if m_varies:
        report["baseline_by_m"] = [
            entry(rows) for _, rows in cells[cells["n"] == 0].groupby("m", sort=True)
        ]
    report["references"] = _references(cells, references)

    est = PowerLawFit(
        n_boot=n_boot,
        ci=CI,
        seed=seed,
        extrapolate_factors=tuple(extrapolate_factors),
        target_mae=target_mae,
        planned_repetitions=planned_repetitions,
    ).fit(transfer[["n", "repetition", "mae"] + (["m"] if has_m else [])], m=m_ref)
    report |= est.to_dict()
    axis, equivalent, axis_notes = m_axis(cells, n_boot=n_boot, ci=CI, seed=seed)
    if m_varies:
        report["target_axis"], report["equivalent_samples"] = axis, equivalent
    headline_sizes = [s for s in sizes if not has_m or s["m"] == m_ref]
    report["diagnostics"] = (
        notes + report["diagnostics"] + _report_diagnostics(headline_sizes, baseline) + axis_notes
    )
    report |= extra or {}
    return json_safe(report)


def report_from_records(
    cfg: StudyConfig,
    records: list[dict],
    status: str,
    extra: dict,
    decisions: list[dict] | None = None,
) -> dict:
    """The one way a report is made from cell records (and a steered study's decisions): by the
    live reducer and by `s2r report`."""
    ok = pd.DataFrame([r for r in records if r.get("status") == "ok"])
    if ok.empty:
        ok = pd.DataFrame(columns=["n", "repetition", "mae"])
    if cfg.target_sizes is None and "m" in ok:
        ok = ok.drop(columns="m")
    references = dict(cfg.report.reference_mae)
    failed = [(r["cell"], r.get("error", "?")) for r in records if r.get("status") != "ok"]
    counts = (extra.get("counts") or {}) | {"cells_ok": len(ok), "cells_failed": len(failed)}
    report = build_report(
        ok,
        study=cfg.name,
        status=status,
        planned_repetitions=(
            {0: cfg.repetitions} | steer.planned_repetitions(cfg, decisions or [])
            if cfg.steer
            else cfg.repetitions
        ),
        target_mae=cfg.target_mae,
        extrapolate_factors=tuple(cfg.report.extrapolate_factors),
        n_boot=cfg.report.n_boot,
        seed=cfg.seed,
        property_name=cfg.data.property,
        units=cfg.data.units,
        references=references,
        extra=extra | {"counts": counts},
    )
    if failed:
        report["diagnostics"].append(dg.failed_cells(failed))
    pool = counts.get("source_pool_rows") or (decisions or [{}])[-1].get("pool_rows")
    if cfg.steer and pool:
        curve = (report.get("equivalent_samples") or {}).get("baseline_curve")
        report["steering"] = steer.section(cfg, records, decisions or [], int(pool), curve)
    return report


def folder_report(
    folder: StudyFolder, status: str | None = None, extra: dict | None = None
) -> dict:
    """Rebuild and write a study's report from its folder alone (`s2r report`, a resumed or
    failed driver): the ledger's cells, the stored config, the previous report's bookkeeping."""
    cfg = folder.config()
    previous = folder.read_report()
    keep = {k: previous[k] for k in ("counts", "mlflow", "timing", "progress") if k in previous}
    status = status or folder.state().get("status") or previous.get("status", "running")
    report = report_from_records(
        cfg, folder.ledger(), status, keep | (extra or {}), folder.decisions()
    )
    write_report(report, folder)
    return report


def write_report(report: dict, folder: StudyFolder, drawn: list[Path] | None = None) -> list[Path]:
    """report.json, the plots, and report.html (the page to mail, from the report and the
    folder's config.yaml and rejected_rows.csv) into `folder`, a study's or one that holds a
    report alone (`s2r fit --out`); the paths written. `drawn`: the plots of a report on the
    same cells, kept (plots show the results, not the status or timing)."""
    from s2r_ray.render.html import render_html
    from s2r_ray.render.plots import render_all  # matplotlib only when writing

    path = folder.save_report(json_safe(report))
    plots = render_all(report, folder.path) if drawn is None else drawn
    config, rejected = folder.config_path(), folder.rejected_rows_path()
    page = folder.save_page(render_html(report, {p.stem: p for p in plots}, config, rejected))
    return [path, *plots, page]
