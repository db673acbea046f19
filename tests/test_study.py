"""A tiny study end to end on a real local Ray and a real SQLite MLflow store."""

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from s2r_ray.cli import main
from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.sweep import run_study

pytestmark = pytest.mark.ray

TINY = {
    "name": "tiny",
    "sizes": [40, 150, 400],
    "repetitions": 2,
    "data": {"synthetic": {"n_source": 700, "n_target": 120, "n_features": 6}},
    "model": {"hidden": [32, 16]},
    "pretrain": {"patience": 3, "max_steps": 2000},
    "finetune": {"epochs": [4, 8], "ensemble": 2},
    "tune": {"trials_per_cell": 2, "grace_period": 2},
    "report": {"n_boot": 200},
}


@pytest.fixture(scope="module")
def study(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    cfg = build_config({**TINY, "tracking": {"uri": uri}})
    lines: list[str] = []
    report = run_study(cfg, tmp / "out", echo=lines.append)
    return cfg, tmp / "out", report, MlflowClient(uri), lines


def _runs(client, kind):
    exp = client.get_experiment_by_name("s2r-ray")
    return client.search_runs([exp.experiment_id], f"tags.`s2r.kind` = '{kind}'", max_results=1000)


def test_report_has_every_key(study):
    cfg, out, report, _, _ = study
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["status"] == report["status"] == "complete"
    for key in (
        "study",
        "status",
        "sizes",
        "baseline",
        "fit",
        "extrapolation",
        "n_for_target",
        "timing",
        "counts",
    ):
        assert key in on_disk, key
    assert [s["n"] for s in on_disk["sizes"]] == cfg.sizes
    for s in on_disk["sizes"] + [on_disk["baseline"]]:
        assert s["repetitions"] == 2 and len(s["test_mae_ci90"]) == 2
        assert s["test_mae_ci90"][0] <= s["test_mae_mean"] <= s["test_mae_ci90"][1]
    assert {"D", "alpha", "C"} <= set(on_disk["fit"])
    assert [e["factor"] for e in on_disk["extrapolation"]] == [10, 100]
    assert (out / "scaling.png").stat().st_size > 10_000


def test_mlflow_holds_the_run_hierarchy(study):
    cfg, _, report, client, _ = study
    (study_run,) = _runs(client, "study")
    sizes = _runs(client, "size")
    trials = _runs(client, "trial")
    pretrains = _runs(client, "pretrain")
    cells = (len(cfg.sizes) + 1) * cfg.repetitions
    assert study_run.info.run_id == report["mlflow"]["study_run_id"]
    assert study_run.data.params["counts.source_rows"] == "700"  # data counts on the study run
    assert sorted(int(r.data.tags["s2r.n"]) for r in sizes) == [0, *cfg.sizes]
    assert all(r.data.tags["mlflow.parentRunId"] == study_run.info.run_id for r in sizes)
    size_ids = {r.info.run_id for r in sizes}
    assert len(trials) == cells * cfg.tune.trials_per_cell
    assert all(r.data.tags["mlflow.parentRunId"] in size_ids for r in trials + pretrains)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
    assert all("val_mae" in r.data.metrics for r in trials)
    # pretraining ran exactly once per (n, r), however many trials and scorings used it
    assert sorted(r.data.tags["s2r.cell"] for r in pretrains) == sorted(
        f"n{n}-mall-r{r}" for n in cfg.sizes for r in range(cfg.repetitions)
    )
    # the fit is logged at each completed size, stepped by the number of sizes so far
    history = client.get_metric_history(study_run.info.run_id, "C")
    assert history and max(m.step for m in history) == len(cfg.sizes)
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"report.json", "scaling.png", "cells.jsonl"} <= artifacts


def test_ledger_has_one_record_per_cell_with_the_selected_model(study):
    cfg, out, _, _, lines = study
    records = StudyFolder(out).ledger()
    assert len(records) == (len(cfg.sizes) + 1) * cfg.repetitions
    assert len({r["cell"] for r in records}) == len(records)
    for r in records:
        assert r["status"] == "ok"
        # the scorer rebuilt exactly the model its best trial validated
        assert r["val_mae"] == pytest.approx(r["selection_val_mae"], rel=1e-9)
        assert r["trials"] == cfg.tune.trials_per_cell
        if r["n"]:
            assert r["zero_shot_mae"] > 0 and r["source_val_mae"] > 0
    cell_lines = [ln for ln in lines if "cells]" in ln]
    pretraining_lines = [ln for ln in lines if ln.startswith("pretraining ")]
    assert len(cell_lines) == len(records)
    assert len(pretraining_lines) == len(cfg.sizes) * cfg.repetitions


def test_report_command_rebuilds_the_report_from_the_ledger(study, capsys):
    _, out, report, _, _ = study
    (out / "report.json").unlink()
    assert main(["report", str(out)]) == 0
    rebuilt = json.loads((out / "report.json").read_text())
    assert rebuilt["status"] == "complete"
    assert rebuilt["fit"]["C"] == pytest.approx(report["fit"]["C"])
    assert rebuilt["sizes"] == report["sizes"]
    assert "fit E(n)" in capsys.readouterr().out


def test_progress_lines_status_and_html_page_of_the_study(study, capsys):
    cfg, out, _, _, lines = study
    cells = (len(cfg.sizes) + 1) * cfg.repetitions
    for line in lines:
        if "cells]" in line:
            assert re.search(r" \| [\d.]+ cells/(s|min), ETA \d+:\d\d", line), line
        if line.startswith("pretraining "):
            assert re.search(r" \| \d+/\d+, [\d.]+ pretrainings/(s|min), ETA ", line), line
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert f": complete, attempt 1; {cells}/{cells} cells finished, 0 failed" in text
    assert "fit: alpha=" in text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "What the study found" in page


def test_a_target_size_axis_shares_pretraining_across_m(ray_session, tmp_path):
    """With a grid of experimental train sizes m, every (n, m, r) is a cell, pretraining still
    runs once per (n, r), and the report carries the E(n, m) analysis."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    raw = {**TINY, "sizes": [60, 400], "target_sizes": [30, 70], "tracking": {"uri": uri}}
    cfg = build_config({**raw, "tune": {"trials_per_cell": 1}, "finetune": {"epochs": [3, 5]}})
    report = run_study(cfg, tmp_path / "out", echo=lambda line: None)
    records = StudyFolder(tmp_path / "out").ledger()
    assert sorted((r["n"], r["m"], r["repetition"]) for r in records) == sorted(
        (n, m, r) for n in (0, 60, 400) for m in (30, 70) for r in range(2)
    )
    assert {r["train_rows"] for r in records} == {30, 70}
    pretrains = _runs(MlflowClient(uri), "pretrain")
    assert len(pretrains) == 2 * 2  # (n, r) pairs, not (n, m, r) cells
    assert {s["m"] for s in report["sizes"]} == {30, 70}
    assert [b["m"] for b in report["baseline_by_m"]] == [30, 70]
    assert "target_axis" in report and "equivalent_samples" in report
