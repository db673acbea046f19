"""The reducer actor: collects finished cells, refits the scaling law as sizes complete, and keeps
report.json, the plots, the cell ledger and MLflow up to date while the study runs."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import ray

from s2r_ray import tracking
from s2r_ray.config import StudyConfig
from s2r_ray.report import build_report, write_report
from s2r_ray.tracking import TrackingContext, size_key

LEDGER = "cells.jsonl"


def read_ledger(out: Path) -> list[dict]:
    path = out / LEDGER
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_from_records(cfg: StudyConfig, records: list[dict], status: str, extra: dict) -> dict:
    """The one way a report is made from cell records: by the live reducer and by `s2r report`."""
    ok = pd.DataFrame([r for r in records if r.get("status") == "ok"])
    if ok.empty:
        ok = pd.DataFrame(columns=["n", "repetition", "mae"])
    if cfg.target_sizes is None and "m" in ok:
        ok = ok.drop(columns="m")
    references = dict(cfg.report.reference_mae)
    return build_report(
        ok,
        study=cfg.name,
        status=status,
        planned_repetitions=cfg.repetitions,
        target_mae=cfg.target_mae,
        extrapolate_factors=tuple(cfg.report.extrapolate_factors),
        n_boot=cfg.report.n_boot,
        seed=cfg.seed,
        property_name=cfg.data.property,
        units=cfg.data.units,
        references=references,
        extra=extra,
    )


def fit_line(report: dict) -> str:
    fit = report.get("fit") or {}
    if fit.get("C") is None:
        codes = [d.get("code") for d in report.get("diagnostics", [])]
        return "fit: waiting for 3 sizes" if "too_few_sizes" in codes else "fit: none"
    lo, hi = fit.get("alpha_ci90") or (None, None)
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    ext = report.get("extrapolation") or []
    at = (
        f", MAE@{ext[0]['factor']:g}x={ext[0]['mae']:.3f}"
        if ext and ext[0].get("mae") is not None
        else ""
    )
    alpha = f"{fit['alpha']:.2f}" if fit.get("alpha") is not None else "n/a (flat)"
    return f"fit: alpha={alpha}{ci} C={fit['C']:.3f}{at}"


@ray.remote(num_cpus=0)
class Reducer:
    """One per study, pinned to the driver's node so <out> is a local directory.

    Every record is appended to the ledger and fsynced before anything else, so a crash later
    in the study loses no finished cell.
    """

    def __init__(
        self, cfg: StudyConfig, out: str, ctx: TrackingContext, planned: dict[int, int], extra: dict
    ):
        self._cfg, self._out, self._ctx = cfg, Path(out), ctx
        self._planned = planned
        self._extra = extra
        self._records: list[dict] = []
        self._arrived: Counter[int] = Counter()
        self._complete: list[int] = []
        self._report: dict = {}

    def add_cell(self, record: dict) -> str:
        """Take one finished cell's record; return the progress line to print."""
        self._append(record)
        n = record["n"]
        self._arrived[n] += 1
        if record["status"] == "ok":
            tracking.log(
                self._ctx,
                self._ctx.size_run(n),
                {"test_mae": record["mae"]},
                step=record["repetition"],
            )
        done = sum(self._arrived.values())
        total = sum(self._planned.values())
        maes = [(r["mae"], r["n"]) for r in self._records if r["status"] == "ok"]
        best = f" (best so far {min(maes)[0]:.4g} at {size_key(min(maes)[1])})" if maes else ""
        line = f"[{done}/{total} cells] {size_key(n)} r{record['repetition']}: " + (
            f"test MAE {record['mae']:.4g}{best}"
            if record["status"] == "ok"
            else f"FAILED ({record['error']})"
        )
        if self._arrived[n] == self._planned[n]:
            self._complete.append(n)
            self._refresh("running")
            self._close_size(n)
            line += f" | {size_key(n)} complete: {self._size_line(n)} | {fit_line(self._report)}"
        return line

    def finish(self, status: str, extra: dict) -> dict:
        """Final report and artifacts; size runs still open end with the study's status (the
        driver ends the study run)."""
        self._extra |= extra
        paths = self._refresh(status)
        for n in self._planned:
            if n not in self._complete:
                tracking.end(
                    self._ctx,
                    self._ctx.size_run(n),
                    "FINISHED" if status == "complete" else "FAILED",
                )
        tracking.log_artifacts(
            self._ctx,
            self._ctx.study_run_id,
            [
                *paths,
                *(
                    p
                    for p in (
                        self._out / LEDGER,
                        self._out / "config.yaml",
                        self._out / "rejected_rows.csv",
                    )
                    if p.exists()
                ),
            ],
        )
        return self._report

    def _append(self, record: dict) -> None:
        self._records.append(record)
        with open(self._out / LEDGER, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _refresh(self, status: str) -> list[Path]:
        fitted_sizes = len([n for n in self._complete if n > 0])
        extra = self._extra | {
            "progress": {
                "cells_done": sum(self._arrived.values()),
                "cells_planned": sum(self._planned.values()),
                "sizes_complete": sorted(self._complete),
            }
        }
        self._report = report_from_records(self._cfg, self._records, status, extra)
        paths = write_report(self._report, self._out)
        fit = self._report.get("fit") or {}
        metrics = {k: fit.get(k) for k in ("D", "alpha", "C")}
        for k in ("alpha", "C"):
            lo_hi = fit.get(f"{k}_ci90") or (None, None)
            metrics |= {f"{k}_ci90_lo": lo_hi[0], f"{k}_ci90_hi": lo_hi[1]}
        for e in self._report.get("extrapolation") or []:
            metrics[f"mae_at_{e['factor']:g}x"] = e.get("mae")
        if fitted_sizes:
            tracking.log(self._ctx, self._ctx.study_run_id, metrics, step=fitted_sizes)
        return paths

    def _size_summary(self, n: int) -> dict:
        if n == 0:
            return self._report.get("baseline") or {}
        return next((s for s in self._report.get("sizes", []) if s["n"] == n), {})

    def _size_line(self, n: int) -> str:
        s = self._size_summary(n)
        if s.get("test_mae_mean") is None:
            return "no finished repetition"
        lo, hi = s.get("test_mae_ci90") or (float("nan"), float("nan"))
        return f"MAE {s['test_mae_mean']:.4g} [{lo:.4g}, {hi:.4g}]"

    def _close_size(self, n: int) -> None:
        s = self._size_summary(n)
        gain = s.get("paired_gain") or {}
        ci = s.get("test_mae_ci90") or (None, None)
        gain_ci = gain.get("ci90") or (None, None)
        converged = s.get("pretrain_converged")
        tracking.log(
            self._ctx,
            self._ctx.size_run(n),
            {
                "test_mae_mean": s.get("test_mae_mean"),
                "test_mae_ci90_lo": ci[0],
                "test_mae_ci90_hi": ci[1],
                "test_rmse_mean": s.get("test_rmse_mean"),
                "single_model_mae_mean": s.get("single_mae_mean"),
                "paired_gain_mean": gain.get("mean"),
                "paired_gain_ci90_lo": gain_ci[0],
                "paired_gain_ci90_hi": gain_ci[1],
                "paired_gain_wins": gain.get("wins"),
                "source_val_mae": s.get("source_val_mae"),
                "pretrain_converged": None if converged is None else float(converged),
                "zero_shot_mae": s.get("zero_shot_mae"),
            },
        )
        tracking.end(self._ctx, self._ctx.size_run(n))
