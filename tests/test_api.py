"""The Python API on real study folders: one written cell by cell as a driver writes it (no Ray),
and one that `run_study` runs on the session's Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import s2r_ray as s2r
from s2r_ray.config import ConfigError, build_config
from s2r_ray.data import DataError
from s2r_ray.folder import StudyFolder

REPO = Path(__file__).resolve().parents[1]
SIZES, REPETITIONS = [100, 300, 1000, 3000, 10000], 3


def law(n: int) -> float:
    """E(n) = 2 n^-0.5 + 0.1, what the cells below are drawn around."""
    return 2.0 * n**-0.5 + 0.1


@pytest.fixture
def folder(tmp_path: Path) -> StudyFolder:
    """A running study as its driver leaves it: config and state, every cell in the ledger but
    one that failed, no report yet. Repetitions spread -1%, 0, +1% around the law."""
    folder = StudyFolder(tmp_path / "study")
    cfg = {"name": "api", "sizes": SIZES, "repetitions": REPETITIONS, "report": {"n_boot": 100}}
    folder.write_config(build_config(cfg))
    for n in [0, *SIZES]:
        for r in range(REPETITIONS):
            cell = {"cell": f"n{n}-mall-r{r}", "n": n, "m": None, "repetition": r}
            if (n, r) == (300, 1):  # the middle one: the others' mean stays on the law
                folder.append_cell(cell | {"status": "failed", "error": "all trials failed"})
                continue
            mae = (0.9 if n == 0 else law(n)) * (1 + 0.01 * (r - 1))
            folder.append_cell(cell | {"status": "ok", "mae": mae})
    return folder


def test_a_study_reads_its_config_cells_and_status_without_writing(folder: StudyFolder) -> None:
    before = sorted(p.name for p in folder.path.iterdir())
    study = s2r.open_study(folder.path)
    assert study.config.name == "api" and study.status == "running"
    cells = study.cells
    assert isinstance(cells, pd.DataFrame) and len(cells) == 6 * REPETITIONS
    assert cells["status"].value_counts().to_dict() == {"ok": 17, "failed": 1}
    assert cells.loc[cells["cell"] == "n100-mall-r1", "mae"].item() == pytest.approx(law(100))
    assert study.report == {} and study.plots == {}  # nothing written yet
    assert repr(study) == f"<Study 'api' at {folder.path}: running, 18 cells>"
    assert sorted(p.name for p in folder.path.iterdir()) == before


def test_fit_refits_with_other_options_and_leaves_the_folder_alone(folder: StudyFolder) -> None:
    study = s2r.open_study(folder.path)
    report = study.fit(target_mae=0.15, extrapolate_factors=[4], n_boot=50)
    fit = report["fit"]
    assert (fit["D"], fit["alpha"], fit["C"]) == pytest.approx((2.0, 0.5, 0.1), rel=1e-3)
    assert [e["factor"] for e in report["extrapolation"]] == [4]
    assert report["extrapolation"][0]["mae"] == pytest.approx(law(40000), rel=1e-3)
    assert report["n_for_target"]["n"] == pytest.approx(1600, rel=1e-2)  # 2/sqrt(n) = 0.05
    assert report["counts"] == {"cells_ok": 17, "cells_failed": 1}
    assert [d["code"] for d in report["diagnostics"]][-1] == "failed_cells"
    assert study.report == {} and study.config.target_mae is None  # nothing written


def test_fit_refuses_an_option_the_config_would_refuse(folder: StudyFolder) -> None:
    with pytest.raises(ConfigError, match=r"fit options: invalid study config\n  report.n_boot"):
        s2r.open_study(folder.path).fit(n_boot=5)


def test_rebuild_report_writes_what_fit_computes_and_the_study_reads_it_back(
    folder: StudyFolder,
) -> None:
    study = s2r.open_study(folder.path)
    rebuilt = study.rebuild_report()
    assert rebuilt == study.fit()  # one way from cells to report, with or without writing
    assert study.report == json.loads(json.dumps(rebuilt))
    assert set(study.plots) == {"scaling", "backtest"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in study.plots.values())
    assert (folder.path / "report.html").is_file()
    assert not list(folder.path.glob(".*.tmp*"))  # the atomic writer left nothing behind
    folder.update_state(status="complete")
    assert study.status == "complete" and study.rebuild_report()["status"] == "complete"


def test_open_study_refuses_a_folder_without_a_study(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a study folder"):
        s2r.open_study(tmp_path)


def test_fit_table_fits_a_frame_or_a_file_the_same_and_writes_only_when_asked(
    folder: StudyFolder, tmp_path: Path
) -> None:
    ok = s2r.open_study(folder.path).cells.query("status == 'ok'")
    from_frame = s2r.fit_table(ok[["n", "repetition", "mae"]], n_boot=50, target_mae=0.15)
    assert from_frame["study"] == "table"
    assert from_frame["fit"]["alpha"] == pytest.approx(0.5, rel=1e-3)
    assert from_frame["n_for_target"]["n"] == pytest.approx(1600, rel=1e-2)
    ok[["n", "repetition", "mae"]].to_csv(tmp_path / "results.csv", index=False)
    out = tmp_path / "fit"
    from_file = s2r.fit_table(tmp_path / "results.csv", n_boot=50, target_mae=0.15, out=out)
    assert from_file["study"] == "results"
    assert from_file["fit"] == from_frame["fit"]
    assert json.loads((out / "report.json").read_text())["fit"] == from_file["fit"]
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.html",
        "scaling.png",
        "backtest.png",
    }


def test_fit_table_names_the_row_it_cannot_take() -> None:
    table = pd.DataFrame({"n": [100, 300], "repetition": [0, 0], "mae": [0.3, -0.2]})
    with pytest.raises(DataError, match=r"^mine: row 2: mae = -0.2 is negative"):
        s2r.fit_table(table, name="mine")
    with pytest.raises(DataError, match=r"missing column\(s\) \['repetition'\]"):
        s2r.fit_table(table.drop(columns="repetition"))


def test_importing_the_package_imports_neither_ray_nor_pandas() -> None:
    code = (
        "import sys, s2r_ray; assert 'pandas' not in sys.modules; "
        "from s2r_ray import open_study; from s2r_ray.api import open_study as api; "
        "assert open_study is api and 'ray' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.ray
def test_run_study_runs_a_yaml_config_with_overrides_then_finds_it_complete(
    ray_session, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [f"tracking.uri={uri}", "repetitions=1"]
    lines: list[str] = []
    study = s2r.run_study(
        REPO / "tests" / "micro_study.yaml",
        tmp_path / "out",
        overrides=overrides,
        echo=lines.append,
    )
    assert study.status == "complete" and study.config.repetitions == 1
    assert sorted(study.cells["n"]) == [0, 40, 150]
    assert set(study.cells["status"]) == {"ok"}
    assert study.report["status"] == "complete" and "scaling" in study.plots
    again = s2r.run_study(
        REPO / "tests" / "micro_study.yaml",
        tmp_path / "out",
        overrides=overrides,
        echo=lines.append,
    )
    assert lines[-1] == f"study micro is already complete in {tmp_path / 'out'}: nothing to run"
    assert len(again.cells) == 3
