"""A tiny study end to end on a real local Ray and a real SQLite MLflow store."""

import json
import re

import numpy as np
import pytest
from faults import runs
from mlflow.tracking import MlflowClient

from s2r_ray.cli import main
from s2r_ray.config import StudyConfig, SyntheticData, build_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.folder import StudyFolder
from s2r_ray.models import make_family
from s2r_ray.protocol import make_plan
from s2r_ray.study import tracking, work
from s2r_ray.study.driver import run_study
from s2r_ray.study.pretrained import FolderStore
from s2r_ray.study.units import ENDED, EPOCH, METRIC, Trial, to_config

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
    # once recorded, a cell keeps only its selected trial's network: the cell's model
    kept = {p.stem for p in (out / "pretrained" / "trials").glob("*.pkl")}
    assert kept == {r["best_trial"] for r in records}
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
    assert "  fit: E(n) = D·n^−α + C with D = " in capsys.readouterr().out


def test_progress_lines_status_and_html_page_of_the_study(study, capsys):
    cfg, out, _, _, lines = study
    cells = (len(cfg.sizes) + 1) * cfg.repetitions
    for line in lines:
        if "cells]" in line:
            assert re.search(r" \| [\d.]+ cells/(s|min), ETA \d+:\d\d", line), line
            assert "FAILED" in line or re.search(r"test MAE [\d.]+ \(best so far", line), line
        if line.startswith("pretraining "):
            assert re.search(r" \| \d+/\d+, [\d.]+ pretrainings/(s|min), ETA ", line), line
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert f": complete, attempt 1; {cells}/{cells} cells finished, 0 failed" in text
    assert "  fit: E(n) = D·n^−α + C with D = " in text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "What the study found" in page


def _check_the_target_axis(report: dict) -> None:
    """target_axis and equivalent_samples of the study on n in (0, 60, 400), m in (20, 40, 70),
    against the report's own tables and, for m_eq, a hand solution of E0(m) = E(n)."""
    axis, eq = report["target_axis"], report["equivalent_samples"]
    print(f"equivalent samples: {eq}")
    assert axis["m_values"] == [20, 40, 70] and axis["n_values"] == [0, 60, 400]
    assert [e["m"] for e in axis["scaling_in_n"]] == [20, 40, 70]
    curves = {c["n"]: c for c in axis["learning_curves"]}
    assert sorted(curves) == [0, 60, 400] and not curves[0]["pretrained"]
    codes = {d["code"] for d in report["diagnostics"]}
    assert eq is not None and "no_equivalent_samples" not in codes, report["diagnostics"]
    # the baseline curve E0(m) = D0 m^-beta + C0 is the n = 0 learning curve over the three m
    b = eq["baseline_curve"]
    assert eq["m_ref"] == 70 and b["m_used"] == [20, 40, 70]
    assert [b["D0"], b["C0"]] == pytest.approx([curves[0]["D"], curves[0]["C"]], rel=1e-9)
    assert curves[0]["alpha"] in (None, pytest.approx(b["beta"], rel=1e-9))  # None: D0 = 0
    # each point: the pretrained MAE at (n, m_ref), and by hand the m where E0 reaches it
    means = {(s["n"], s["m"]): s["test_mae_mean"] for s in report["sizes"]}
    assert [p["n"] for p in eq["points"]] == [60, 400]
    for p in eq["points"]:
        assert p["mae"] == pytest.approx(means[p["n"], 70], rel=1e-9), p
        gap = p["mae"] - b["C0"]
        if gap <= 0:  # below the baseline's floor: no m reaches it
            assert p["m_eq"] == p["gain_factor"] == "unreachable", (p, b)
            continue
        m_eq = (b["D0"] / gap) ** (1 / b["beta"]) if b["D0"] > 0 else 0.0
        assert p["m_eq"] == pytest.approx(m_eq, rel=1e-6), (p, b)
        assert p["gain_factor"] == pytest.approx(m_eq / 70, rel=1e-6), p
        assert p["extrapolated"] == (m_eq > 70), p


def test_a_target_size_axis_shares_pretraining_across_m(ray_session, tmp_path):
    """With a grid of experimental train sizes m, every (n, m, r) is a cell, pretraining still
    runs once per (n, r), and the report carries the E(n, m) analysis: with the baseline at
    three m, the equivalent experimental sample size too."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    raw = {**TINY, "sizes": [60, 400], "target_sizes": [20, 40, 70], "tracking": {"uri": uri}}
    cfg = build_config({**raw, "tune": {"trials_per_cell": 1}, "finetune": {"epochs": [3, 5]}})
    report = run_study(cfg, tmp_path / "out", echo=lambda line: None)
    records = StudyFolder(tmp_path / "out").ledger()
    assert sorted((r["n"], r["m"], r["repetition"]) for r in records) == sorted(
        (n, m, r) for n in (0, 60, 400) for m in (20, 40, 70) for r in range(2)
    )
    assert {r["train_rows"] for r in records} == {20, 40, 70}
    pretrains = _runs(MlflowClient(uri), "pretrain")
    assert len(pretrains) == 2 * 2  # (n, r) pairs, not (n, m, r) cells
    assert {s["m"] for s in report["sizes"]} == {20, 40, 70}
    assert [b["m"] for b in report["baseline_by_m"]] == [20, 40, 70]

    _check_the_target_axis(report)


@pytest.mark.parametrize(("epochs", "sent"), [(9, [2, 6, 9]), (6, [2, 6, 6])])
def test_a_trial_reports_to_tune_at_its_rungs_and_last_epoch_and_logs_every_epoch(
    ray_session, tmp_path, monkeypatch, epochs, sent
):
    """`run_unit` on a trial outside Tune, Tune's `report` recorded: ASHA decides only at rung
    epochs, and each report waits for the driver, so the others are not sent; the MLflow curve
    (real SQLite store) still has every epoch. The last report says the trial ended (again at
    a rung's epoch), with its network already kept and its run still open: the driver tells
    Optuna before the run can end FINISHED."""
    cfg = StudyConfig(name="t", sizes=[200], repetitions=1, model={"hidden": [16, 8]})
    plan = make_plan(cfg, make_synthetic(SyntheticData(n_source=400, n_target=300)))
    cell = next(c for c in plan.cells if c.is_baseline)
    hp = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": epochs, "batch_size": 32, "freeze": 0}
    trial = Trial(cell, 0, 5, hp)
    ctx = tracking.start_study(f"sqlite:///{tmp_path / 'm.db'}", "s2r-ray", "t", {}, [200], {})
    store = FolderStore(str(tmp_path / "out"))
    reports: list[dict] = []

    def report(result: dict) -> None:
        (run,) = runs(tmp_path / "m.db", "trial")
        kept = store.load_trial(trial.key) is not None
        reports.append(result | {"kept": kept, "run": run.info.status})

    monkeypatch.setattr(work.tune, "report", report)
    family = make_family(cfg)
    work.run_unit(
        to_config(trial), plan=plan, store=store, family=family, cfg=cfg, ctx=ctx, rungs=(2, 6)
    )
    assert [r[EPOCH] for r in reports] == sent
    assert [r.get(ENDED, False) for r in reports] == [False, False, True]
    assert reports[-1]["kept"] and reports[-1]["run"] == "RUNNING"
    (run,) = runs(tmp_path / "m.db", "trial")
    assert run.info.status == "FINISHED"
    curve = ctx.client.get_metric_history(run.info.run_id, "best_val_mae")
    assert [m.step for m in curve] == list(range(1, epochs + 1))
    assert [r[METRIC] for r in reports] == [curve[e - 1].value for e in sent]
    assert np.isfinite(reports[-1]["train_seconds"])
