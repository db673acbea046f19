"""The reviewer's texts and links, from plain report dicts (no MLflow, no Ray)."""

from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from s2r_ray.render import notes
from s2r_ray.report import build_report


@pytest.fixture(scope="module")
def report() -> dict:
    rng = np.random.default_rng(0)
    rows = [
        {"n": n, "repetition": r, "mae": (0.6 * n**-0.2 + 0.1 if n else 0.5) + rng.normal(0, 0.005)}
        for n in (0, 100, 300, 1000, 3000)
        for r in range(3)
    ]
    return build_report(
        pd.DataFrame(rows),
        study="demo",
        status="complete",
        target_mae=0.2,
        n_boot=200,
        units="eV",
        property_name="band gap",
    )


def _query(path: str) -> dict[str, str]:
    """The query of a UI hash route, decoded."""
    return {k: v[0] for k, v in parse_qs(urlsplit(path.split("#", 1)[1]).query).items()}


def test_run_names_read_as_a_person_says_them():
    assert notes.size_run_name("demo", 300) == "demo · n=300"
    assert notes.size_run_name("demo", 0) == "demo · baseline"
    assert notes.run_name("trial", 300, None, 1, "n300-mall-r1-t03") == "n=300 r1 trial 03"
    assert notes.run_name("trial", 0, 70, 0, "n0-m70-r0-t11") == "baseline m=70 r0 trial 11"
    assert notes.run_name("pretrain", 300, None, 1, "pretrain n300-r1") == "pretrain n=300 r1"


def test_study_note_says_what_the_study_found(report):
    note = notes.study_note(report, "7", "abc", ["scaling.png", "backtest.png"])
    fit = report["fit"]
    lo, hi = fit["alpha_ci90"]
    first, fit_line = note.splitlines()[0], note.splitlines()[2]
    assert first.startswith("**demo** (complete): test MAE (eV) of band gap")
    assert f"α = {fit['alpha']:.3g} [{lo:.3g}, {hi:.3g}]" in fit_line and "C = " in fit_line
    for s in [report["baseline"], *report["sizes"]]:
        assert f"| {notes.size_key(s['n'])} | 3 | {s['test_mae_mean']:.4g} |" in note
    for d in report["diagnostics"]:
        assert f"- {d['message']}" in note
    for e in report["extrapolation"]:
        where = f"at {e['factor']:g}× the largest n (n = {e['n']:,.0f})"
        assert f"- {where}: MAE {e['mae']:.4g}" in note
    assert "- Simulated rows needed for a target MAE of 0.2: n ≈ " in note
    assert "**Plots:** [scaling.png](#/experiments/7/runs/abc/artifacts/scaling.png) · " in note
    # the plots inline from the UI's own artifact endpoint, in the order given
    assert note.rstrip().endswith(
        "![scaling.png](get-artifact?path=scaling.png&run_uuid=abc)\n"
        "![backtest.png](get-artifact?path=backtest.png&run_uuid=abc)"
    )


def test_study_note_links_search_the_study_s_own_runs(report):
    note = notes.study_note(report, "7", "abc", [])
    parts = note.split("**Runs:** ")[1].splitlines()[0].split(" · ")
    links = dict(p.removeprefix("[").removesuffix(")").split("](") for p in parts)
    assert set(links) == {
        "its runs as one tree",
        "sizes",
        "selected trials",
        "failed trials",
        "pretraining",
    }
    assert _query(links["failed trials"])["searchFilter"] == (
        "tags.`s2r.study_run` = 'abc' and tags.`s2r.kind` = 'trial'"
        " and attributes.status = 'FAILED'"
    )
    tree = _query(links["its runs as one tree"])
    assert tree == {
        "workflowType": "machine_learning",
        "searchFilter": "tags.`s2r.study_run` = 'abc'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": "true",
    }
    assert "get-artifact" not in note  # no plots logged yet: no broken images


def test_a_study_without_a_fit_says_so():
    rows = pd.DataFrame({"n": [0, 100], "repetition": [0, 0], "mae": [0.5, 0.4]})
    report = build_report(rows, study="early", status="running", n_boot=50)
    note = notes.study_note(report, "1", "r", [])
    assert "**Fit:** none yet" in note and "- none: it needs a fit." in note
    assert any(d["message"] in note for d in report["diagnostics"] if d["code"] == "too_few_sizes")
    assert notes.headline(report) == "running · best MAE 0.4 at n=100"


def test_size_note_lists_every_cell_and_links_the_selected_trial(report):
    records = [
        {
            "n": 300,
            "repetition": r,
            "m": None,
            "status": "ok",
            "mae": 0.3 + r / 100,
            "val_mae": 0.25,
            "best_trial": f"n300-mall-r{r}-t0{r}",
            "trials": 4,
            "failed_trials": r,
        }
        for r in range(2)
    ] + [{"n": 300, "repetition": 2, "status": "failed", "error": "all trials failed: a | b"}]
    entry = next(s for s in report["sizes"] if s["n"] == 300)
    note = notes.size_note("demo", 300, entry, records, "7", "abc", {"n300-mall-r0-t00": "run0"})
    assert note.startswith(f"**demo · n=300**: test MAE {entry['test_mae_mean']:.4g} [")
    assert "better in 3 of 3 repetitions" in note
    assert "| n=300 r0 | 0.3 | [n=300 r0 trial 00](#/experiments/7/runs/run0?" in note
    assert "| n=300 r1 | 0.31 | n=300 r1 trial 01 | 0.25 | 4 (1) |" in note  # not found: no link
    assert "| n=300 r2 | failed: all trials failed: a / b | | | |" in note  # table stays a table
    best_first = _query(note.split("[trials, best first](")[1].split(")")[0])
    assert best_first["orderByKey"] == "metrics.`best_val_mae`"
    assert best_first["searchFilter"].endswith("tags.`s2r.n` = '300'")


def test_experiment_note_opens_with_the_studies_view_and_lists_each_study_once():
    rows = [
        notes.StudyRow("b", "rb", 1_700_000_100_000, "running · 3/9 cells"),
        notes.StudyRow("a", "ra", 1_700_000_000_000, "complete · α 0.1 [0.08, 0.12]"),
    ]
    note = notes.experiment_note("4", rows)
    first = note.splitlines()[0]
    assert first.startswith(notes.EXPERIMENT_NOTE_START)
    assert _query(first.split("](")[1].split(")")[0])["searchFilter"] == "tags.`s2r.kind` = 'study'"
    table = [line for line in note.splitlines() if line.startswith("| [")]
    assert [line.split("]")[0] for line in table] == ["| [b", "| [a"]
    assert "(#/experiments/4/runs/ra?workflowType=machine_learning)" in table[1]


@pytest.mark.parametrize(
    ("uri", "base", "command"),
    [
        ("http://mlflow.lab:5000/", "http://mlflow.lab:5000", "MLflow UI: http://mlflow.lab:5000"),
        (
            "sqlite:////data/my runs/mlruns.db",
            notes.LOCAL_UI,
            "MLflow UI: mlflow ui --backend-store-uri 'sqlite:////data/my runs/mlruns.db',"
            " then open",
        ),
    ],
)
def test_reviewer_lines_are_urls_a_browser_opens(uri, base, command):
    lines = notes.reviewer_lines(uri, "4", "r1")
    assert lines[0] == command
    urls = [line.split(": ", 1)[1].strip() for line in lines[1:]]
    assert urls[0] == f"{base}/#/experiments/4/runs/r1?workflowType=machine_learning"
    assert all(u.startswith(f"{base}/#/experiments/4/runs") and " " not in u for u in urls)
