"""The reducer actor: collects finished cells, refits the scaling law as sizes complete, and keeps
report.json, the plots, the cell ledger and MLflow up to date while the study runs."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import ray

from s2r_ray import steer
from s2r_ray.config import StudyConfig
from s2r_ray.folder import StudyFolder
from s2r_ray.models.base import Pretrained
from s2r_ray.progress import Rate
from s2r_ray.protocol import size_key
from s2r_ray.render.text import cell_line, decision_line, fit_line, size_line
from s2r_ray.report import report_from_records, write_report
from s2r_ray.study import tracking
from s2r_ray.study.tracking import TrackingContext


@ray.remote(num_cpus=0, concurrency_groups={"files": 2})
class Reducer:
    """One per study, pinned to the driver's node so that <out> is a local folder: it appends
    the ledger, keeps the report current, and keeps the pretrained networks: pretraining jobs
    on any node save them here, and trials on any node read them.

    Every record is appended to the ledger and fsynced before anything else, so a crash later
    in the study loses no finished cell; a cell already in the ledger is never appended again.
    Pretrained networks are read and written in their own threads, so no job waits for a fit.
    """

    def __init__(
        self, cfg: StudyConfig, out: str, ctx: TrackingContext, planned: dict[int, int], extra: dict
    ):
        self._cfg, self._folder, self._ctx = cfg, StudyFolder(out), ctx
        self._planned, self._extra = Counter(planned), extra
        self._records = self._folder.ledger()
        self._decisions = self._folder.decisions()
        self._arrived: Counter[int] = Counter(r["n"] for r in self._records)
        self._complete = sorted(n for n in planned if self._arrived[n] >= planned[n])
        self._rate = Rate(sum(planned.values()), len(self._records))  # cells of this attempt
        self._report: dict = {}
        self._drawn: tuple[tuple[int, int], list[Path]] | None = None  # plots, for which cells
        if self._records:  # a resumed study: its report and plots reflect the ledger at once
            self._refresh("running", log_fit=False)

    @ray.method(concurrency_group="files")
    def pretrained(self, key: str) -> Pretrained:
        return self._folder.load_pretrained(key)

    @ray.method(concurrency_group="files")
    def save_pretrained(self, key: str, pretrained: Pretrained) -> None:
        """A pretraining job's network, written here because <out> is local to this node."""
        self._folder.save_pretrained(key, pretrained)

    def add_cell(self, record: dict) -> tuple[str | None, dict | None]:
        """Take one finished cell's record; return the progress line to print (None for a cell
        the ledger already holds) and, in a steered study whose round this cell completes, the
        decision taken (the driver hands its cells to the searcher)."""
        if any(r["cell"] == record["cell"] for r in self._records):
            return None, None
        record = {**record, "finished_at": round(time.time(), 3)}
        self._records.append(record)
        self._folder.append_cell(record)
        self._folder.prune_trial_networks(record["cell"], record.get("best_trial"))
        n = record["n"]
        self._arrived[n] += 1
        self._rate.add(record["finished_at"])
        if record["status"] == "ok":
            metric = {"test_mae": record["mae"]}
            tracking.log(self._ctx, self._ctx.size_run(n), metric, step=record["repetition"])
        done, total = sum(self._arrived.values()), sum(self._planned.values())
        line = f"{cell_line(record, self._records, done, total)} | "
        line += self._rate.describe(record["finished_at"])
        if self._arrived[n] == self._planned[n]:
            self._complete.append(n)
            # the fit is stepped by completed sizes n > 0; the baseline adds no step of its own
            self._refresh("running", log_fit=n > 0)
            self._close_size(n)
            size = size_line(self._size_summary(n))
            line += f" | {size_key(n)} complete: {size} | {fit_line(self._report)}"
        decision = self.steer()
        if decision is not None:
            line += "\n" + decision_line(decision)
        return line, decision

    def steer(self) -> dict | None:
        """In a steered study whose planned cells have all finished and that has not stopped:
        take the next decision, write it to the study folder before anything acts on it, plan
        its cells, open an MLflow run for a new size, and return it (else None)."""
        if self._cfg.steer is None or steer.stopped(self._decisions):
            return None
        if any(self._arrived[n] < k for n, k in self._planned.items()):
            return None
        pool = self._extra["counts"]["source_pool_rows"]
        decision = steer.decide(self._cfg, self._records, self._decisions, pool)
        self._folder.append_decision(decision)
        self._decisions.append(decision)
        cells = steer.decision_cells(self._cfg, decision)
        self._planned.update(c.n for c in cells)
        self._complete = [n for n in self._complete if not cells or n != cells[0].n]
        self._rate.total += len(cells)
        if cells and tracking.open_size(self._ctx, self._cfg.name, cells[0].n):
            self._folder.update_state(mlflow=tracking.ids(self._ctx))
        tracking.log_decision(self._ctx, decision)
        self._refresh("running", log_fit=False)
        return decision

    def context(self) -> TrackingContext:
        """The tracking context with the size runs steering opened (the driver ends them)."""
        return self._ctx

    def finish(self, status: str, extra: dict) -> dict:
        """Final report and artifacts (the driver ends the MLflow runs)."""
        self._extra |= extra
        paths = self._refresh(status, log_fit=False)
        files = [*paths, *self._folder.record_files()]
        tracking.log_artifacts(self._ctx, self._ctx.study_run_id, files)
        plots = [p.name for p in paths if p.suffix == ".png"]
        tracking.describe_study(self._ctx, self._report, plots)
        return self._report

    def _refresh(self, status: str, log_fit: bool) -> list[Path]:
        fitted_sizes = len([n for n in self._complete if n > 0])
        extra = self._extra | {
            "progress": {
                "cells_done": sum(self._arrived.values()),
                "cells_planned": sum(self._planned.values()),
                "sizes_complete": sorted(self._complete),
            }
        }
        self._report = report_from_records(self._cfg, self._records, status, extra, self._decisions)
        # the last cell's refresh drew the plots that the final report (its status and timing
        # new) would draw again: a second of every study's end
        cells = (len(self._records), len(self._decisions))
        kept = self._drawn[1] if self._drawn is not None and self._drawn[0] == cells else None
        paths = write_report(self._report, self._folder, kept)
        self._drawn = cells, [p for p in paths if p.suffix == ".png"]
        fit = self._report.get("fit") or {}
        metrics = {k: fit.get(k) for k in ("D", "alpha", "C")}
        for k in ("alpha", "C"):
            lo_hi = fit.get(f"{k}_ci90") or (None, None)
            metrics |= {f"{k}_ci90_lo": lo_hi[0], f"{k}_ci90_hi": lo_hi[1]}
        for e in self._report.get("extrapolation") or []:
            metrics[f"mae_at_{e['factor']:g}x"] = e.get("mae")
        if log_fit and fitted_sizes:
            tracking.log(self._ctx, self._ctx.study_run_id, metrics, step=fitted_sizes)
        return paths

    def _size_summary(self, n: int) -> dict:
        """The size at the largest m (all train rows when m does not vary), as the headline
        fit and the baseline use."""
        if n == 0:
            return self._report.get("baseline") or {}
        entries = [s for s in self._report.get("sizes", []) if s["n"] == n]
        return max(entries, key=lambda s: s.get("m") or 0, default={})

    def _close_size(self, n: int) -> None:
        records = [r for r in self._records if r["n"] == n]
        tracking.close_size(self._ctx, self._cfg.name, n, self._size_summary(n), records)
        tracking.describe_study(self._ctx, self._report, plots=[])
