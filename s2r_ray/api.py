"""The Python API, for notebooks and scripts: what the `s2r` commands do, as objects and
functions that return pandas frames and report dicts (the keys of `s2r_ray.report`).

    import s2r_ray as s2r
    study = s2r.open_study("runs/demo")    # a running or finished study folder
    study.cells                            # the ledger, one row per finished cell
    study.fit(target_mae=0.3)["n_for_target"]  # refitted with other options; nothing written
    s2r.fit_table("results.csv")           # any table of n, repetition, mae[, m]

Reading a study never writes to its folder; `Study.rebuild_report` and `fit_table(out=...)`
write reports, `run_study` runs (or resumes) a study. Ray is imported only by `run_study`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2r_ray.config import ConfigError, StudyConfig, build_config, load_config
from s2r_ray.data.reader import DataError, read_table
from s2r_ray.folder import StudyFolder
from s2r_ray.report import REQUIRED, build_report, folder_report, report_from_records, write_report


class Study:
    """One study folder, read as it stands now: while the study runs, each attribute read
    again sees the cells finished since."""

    def __init__(self, folder: StudyFolder):
        self.folder = folder

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def config(self) -> StudyConfig:
        return self.folder.config()

    @property
    def status(self) -> str:
        """running, complete, interrupted or failed."""
        return self.folder.status()

    @property
    def cells(self) -> pd.DataFrame:
        """The ledger (cells.jsonl): one row per finished cell, failed ones included
        (`status` != "ok", with their `error`)."""
        return pd.DataFrame(self.folder.ledger())

    @property
    def report(self) -> dict[str, Any]:
        """report.json as the study last wrote it ({} before its first)."""
        return self.folder.read_report()

    @property
    def plots(self) -> dict[str, Path]:
        """The report's PNGs by name: scaling, backtest, target_axis (when m varies)."""
        return self.folder.plot_paths()

    def fit(
        self,
        *,
        target_mae: float | None = None,
        extrapolate_factors: Sequence[float] | None = None,
        n_boot: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The report of the cells finished so far, refitted with these options (None keeps
        the study's own); the folder is left as it is."""
        tree = self.config.model_dump(mode="json")
        for section, key, value in (
            (tree, "target_mae", target_mae),
            (tree, "seed", seed),
            (tree["report"], "extrapolate_factors", extrapolate_factors),
            (tree["report"], "n_boot", n_boot),
        ):
            if value is not None:
                section[key] = value
        cfg = build_config(tree, origin=f"{self.path}: fit options")
        counts = {"counts": self.report.get("counts") or {}}  # the source pool, for steering
        return report_from_records(
            cfg, self.folder.ledger(), self.status, counts, self.folder.decisions()
        )

    def rebuild_report(self) -> dict[str, Any]:
        """Rebuild report.json, the plots and report.html from the ledger, and return the
        report (what `s2r report` does)."""
        return folder_report(self.folder)

    def __repr__(self) -> str:
        state = self.folder.state()
        cells = len(self.folder.ledger())
        return f"<Study {state.get('study')!r} at {self.path}: {self.status}, {cells} cells>"


def open_study(path: str | Path) -> Study:
    """The study in this folder (an `s2r run --out`), running or finished."""
    folder = StudyFolder(path)
    if not folder.has_study():
        raise ConfigError(f"{path}: not a study folder (no config.yaml)")
    return Study(folder)


def _check_table(table: pd.DataFrame, origin: str) -> None:
    """The cells a fit needs: the required columns, n and mae never negative (a typo, not a
    cell to drop), at least one row with both finite."""
    if missing := [c for c in REQUIRED if c not in table.columns]:
        raise DataError(f"{origin}: missing column(s) {missing}; need {', '.join(REQUIRED)}")
    numbers = table[["n", "mae"]].apply(pd.to_numeric, errors="coerce")
    for column in numbers:
        negative = np.flatnonzero(numbers[column] < 0)
        if len(negative):
            row = negative[0]
            raise DataError(
                f"{origin}: row {row + 1}: {column} = {table[column].iloc[row]} is "
                f"negative ({len(negative)} such row(s)); n is a number of source rows "
                "(0: no pretraining) and mae an error, both >= 0"
            )
    if not np.isfinite(numbers.to_numpy(float)).all(axis=1).any():
        raise DataError(
            f"{origin}: no row with a finite n and mae ({len(table)} rows): nothing to fit"
        )


def fit_table(
    table: pd.DataFrame | str | Path,
    *,
    name: str | None = None,
    target_mae: float | None = None,
    extrapolate_factors: Sequence[float] = (10, 100),
    n_boot: int = 1000,
    seed: int = 0,
    references: dict[str, float] | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The report of any table of results: one row per cell with n (0: no pretraining),
    repetition, mae and optionally m; a frame, or a CSV/table file. With `out`, report.json,
    the plots and report.html are written there too (what `s2r fit` does)."""
    if n_boot < 10:
        raise ConfigError(f"n_boot = {n_boot}: need at least 10 bootstrap resamples")
    path = None if isinstance(table, pd.DataFrame) else Path(table)
    frame = table if path is None else read_table(path, [])
    label = name or (path.stem if path else "table")
    _check_table(frame, str(path or label))
    report = build_report(
        frame,
        study=label,
        status="complete",
        target_mae=target_mae,
        extrapolate_factors=tuple(extrapolate_factors),
        n_boot=n_boot,
        seed=seed,
        references=references,
    )
    if out is not None:
        write_report(report, StudyFolder(out))
    return report


def run_study(
    config: StudyConfig | dict[str, Any] | str | Path,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    quick: bool = False,
    address: str | None = None,
    fresh: bool = False,
    echo: Callable[[str], None] = print,
) -> Study:
    """Run a study, or resume it in `out` (as `s2r run`): from a YAML file, a mapping of the
    same fields or a `StudyConfig`; `overrides` are --set's "key=value", `quick` --quick.
    Raises `s2r_ray.study.driver.StudyInterrupted` on SIGINT/SIGTERM; the folder keeps all
    that was done."""
    from s2r_ray.study.driver import run_study as run  # imports ray

    if isinstance(config, StudyConfig):
        config = config.model_dump(mode="json")
    load = build_config if isinstance(config, dict) else load_config
    run(load(config, list(overrides), quick), Path(out), address=address, fresh=fresh, echo=echo)
    return Study(StudyFolder(out))
