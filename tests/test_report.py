"""build_report / write_report: every key, hand-checked paired gains, valid JSON and PNGs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2r_ray.folder import StudyFolder
from s2r_ray.render.plots import render_all
from s2r_ray.report import build_report, write_report

TOP_KEYS = {
    "study",
    "status",
    "property",
    "units",
    "sizes",
    "baseline",
    "references",
    "fit",
    "extrapolation",
    "n_for_target",
    "backtest",
    "diagnostics",
    "alternatives",
    "curve",
}
SIZE_KEYS = {
    "n",
    "repetitions",
    "planned_repetitions",
    "test_mae_mean",
    "test_mae_ci90",
    "test_rmse_mean",
    "trials",
    "paired_gain",
    "source_val_mae",
    "pretrain_converged",
    "zero_shot_mae",
    "single_mae_mean",
}
PNG = b"\x89PNG\r\n\x1a\n"


def cells(sizes=(0, 1000, 4000, 16000, 64000), ms=(None,), reps: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in ms:
        for r in range(reps):
            split = rng.normal(0, 0.01)  # shared by every size of a repetition
            for n in sizes:
                level = 2 * (m or 400) ** -0.5 + 0.1
                mae = level if n == 0 else 0.1 + (level - 0.1) * (n / 1000) ** -0.3
                row = {
                    "n": n,
                    "repetition": r,
                    "mae": mae + split + rng.normal(0, 0.003),
                    "rmse": 1.3 * mae,
                    "trials": 4,
                    "pretrain_converged": n != 64000,
                    "source_val_mae": 0.05,
                    "zero_shot_mae": 0.5,
                    "single_mae": mae + 0.01,
                    "reference_mae": 0.2 + r / 100,
                }
                if m is not None:
                    row["m"] = m
                rows.append(row)
    return pd.DataFrame(rows)


def strict_load(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON number {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_has_every_key_and_hand_checked_gains() -> None:
    table = cells()
    report = build_report(
        table,
        study="demo",
        status="finished",
        planned_repetitions=5,
        target_mae=0.12,
        property_name="band gap",
        units="eV",
        references={"Matbench": 0.33},
        extra={"wall_s": 12.5, "status": "overridden by extra"},
    )
    assert set(report) >= TOP_KEYS and report["wall_s"] == 12.5
    assert report["status"] == "overridden by extra"  # extra is merged last
    assert "target_axis" not in report
    assert [s["n"] for s in report["sizes"]] == [1000, 4000, 16000, 64000]
    for entry in [*report["sizes"], report["baseline"]]:
        assert set(entry) >= SIZE_KEYS
    size = report["sizes"][0]
    assert size["repetitions"] == 4 and size["planned_repetitions"] == 5
    # paired gain by hand: baseline minus transfer on the same repetition
    base = table[table["n"] == 0].set_index("repetition")["mae"]
    mine = table[table["n"] == 1000].set_index("repetition")["mae"]
    diffs = base - mine
    gain = size["paired_gain"]
    assert gain["mean"] == pytest.approx(diffs.mean())
    assert gain["wins"] == int((diffs > 0).sum()) and gain["repetitions"] == 4
    assert gain["detectable"] == (gain["ci90"][0] > 0 or gain["ci90"][1] < 0)
    assert size["test_mae_mean"] == pytest.approx(mine.mean())
    lo, hi = size["test_mae_ci90"]
    assert lo < mine.mean() < hi
    assert size["test_rmse_mean"] == pytest.approx(table[table["n"] == 1000]["rmse"].mean())
    assert report["baseline"]["paired_gain"] is None
    assert report["references"] == {
        "Matbench": 0.33,
        "simulation_alone": pytest.approx(np.mean([0.2, 0.21, 0.22, 0.23])),
    }
    assert report["sizes"][-1]["pretrain_converged"] is False
    codes = {d["code"] for d in report["diagnostics"]}
    assert {"pretrain_not_converged", "missing_repetitions", "no_target_axis"} <= codes
    assert report["n_for_target"]["target"] == 0.12


def test_report_with_target_axis_and_equivalent_samples(tmp_path: Path) -> None:
    report = build_report(cells(ms=(50, 100, 200, 400), reps=3), study="axis", status="finished")
    assert {"baseline_by_m", "target_axis", "equivalent_samples"} <= set(report)
    assert [b["m"] for b in report["baseline_by_m"]] == [50, 100, 200, 400]
    assert report["baseline"]["m"] == 400 and report["fit"]["m"] == 400
    assert len(report["sizes"]) == 16
    assert report["equivalent_samples"]["m_ref"] == 400
    written = write_report(report, StudyFolder(tmp_path))
    names = ["report.json", "scaling.png", "backtest.png", "target_axis.png", "report.html"]
    assert [p.name for p in written] == names


def test_write_report_gives_strict_json_and_pngs(tmp_path: Path) -> None:
    table = cells()
    table.loc[0, "mae"] = np.nan
    report = build_report(table, study="w", status="running")
    paths = write_report(report, StudyFolder(tmp_path / "out"))
    loaded = strict_load(tmp_path / "out" / "report.json")
    assert loaded["study"] == "w" and loaded["diagnostics"][0]["code"] == "non_finite_dropped"
    for p in paths[1:-1]:
        assert p.read_bytes()[:8] == PNG
    assert paths[-1].name == "report.html"
    assert not list((tmp_path / "out").glob(".report.*"))  # the temporary file is gone


@pytest.mark.parametrize(
    "sizes", [(), (0,), (1000,), (0, 1000), (0, 1000, 4000), (1000, 4000, 16000)], ids=str
)
def test_thin_reports_render(tmp_path: Path, sizes: tuple[int, ...]) -> None:
    """Without a warning: a live study's report after its first size is printed mid-study."""
    table = cells(sizes=sizes) if sizes else pd.DataFrame(columns=["n", "repetition", "mae"])
    report = build_report(table, study="thin", status="running", target_mae=0.1)
    json.dumps(report, allow_nan=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = render_all(report, tmp_path)
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    codes = {d["code"] for d in report["diagnostics"]}
    if len(sizes) - (0 in sizes) < 3:
        assert "too_few_sizes" in codes
    if 0 not in sizes:
        assert "no_baseline" in codes


def test_missing_required_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="repetition"):
        build_report(pd.DataFrame({"n": [1], "mae": [0.1]}), study="x", status="x")
