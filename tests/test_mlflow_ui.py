"""The MLflow UI as a reviewer meets it, checked in a real browser: a tiny study's store served by
`mlflow server`, its pages rendered by headless Chromium, assertions on the rendered DOM. The
screenshots stay under the test's tmp dir (`pytest --basetemp DIR` keeps them where you look)."""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import browser
import pytest
from mlflow.tracking import MlflowClient

from s2r_ray.cli import main
from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.local_servers import LOOPBACK, free_port, start_group, stop_group, wait_http
from s2r_ray.render import notes
from s2r_ray.render.format import fit_sentence
from s2r_ray.study import tracking
from s2r_ray.study.driver import run_study

pytestmark = pytest.mark.ray

README = Path(__file__).resolve().parents[1] / "README.md"
STUDY = {
    "name": "demo",  # as in the README's search strings, like its size 300
    "sizes": [30, 100, 300],  # three sizes: a fit, and so a fit history
    "repetitions": 1,
    "data": {"synthetic": {"n_source": 500, "n_target": 120, "n_features": 6}},
    "model": {"hidden": [16]},
    "pretrain": {"patience": 2, "max_steps": 300},
    "finetune": {"epochs": [2, 3]},
    "tune": {"trials_per_cell": 2, "grace_period": 1},
    "report": {"n_boot": 100},
}


@dataclass(frozen=True)
class Served:
    """A finished tiny study and the `mlflow server` over its store."""

    url: str
    client: MlflowClient
    experiment_id: str
    study_run_id: str
    out: Path
    shots: Path


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory) -> Iterator[Served]:
    """The server starts while the study runs (it takes seconds to come up) and is stopped
    with its whole process group."""
    tmp = tmp_path_factory.mktemp("mlflow_ui")
    db, port, log = tmp / "mlruns.db", free_port(), tmp / "server.log"
    client = MlflowClient(f"sqlite:///{db}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"]
    cmd += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    cmd += ["--artifacts-destination", str(tmp / "mlartifacts")]
    server = start_group(cmd, log, os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        cfg = build_config({**STUDY, "tracking": {"uri": f"sqlite:///{db}"}})
        report = run_study(cfg, tmp / "out", echo=lambda line: None)
        url = f"http://{LOOPBACK}:{port}"
        wait_http(f"{url}/health", server, 180, log)
        study_run_id = report["mlflow"]["study_run_id"]
        experiment = client.get_experiment_by_name("s2r-ray")
        assert experiment.artifact_location == str(tmp / "mlartifacts")  # chosen: beside the store
        experiment_id = experiment.experiment_id
        yield Served(url, client, experiment_id, study_run_id, tmp / "out", tmp / "screenshots")
    finally:
        stop_group(server)


@pytest.fixture(scope="module")
def printed(served) -> dict[str, str]:
    """The links `s2r report` prints, pointed at the test's server instead of `mlflow ui`'s."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["report", str(served.out)]) == 0
    pairs = re.findall(r"^  (.+?):\s+(http\S+)$", out.getvalue(), re.MULTILINE)
    return {label: url.replace(notes.LOCAL_UI, served.url) for label, url in pairs}


def render(url: str, shot: Path) -> str:
    """The page's DOM once the single-page app has rendered it; a screenshot of it at `shot`."""
    shot.parent.mkdir(exist_ok=True)
    # 15 s of virtual time: the app fetches its runs and renders them before the dump
    args = (f"--screenshot={shot}", "--window-size=1400,1200", "--dump-dom")
    dom = browser.run(url, *args, wait_ms=15_000, timeout=180)
    assert shot.stat().st_size > 10_000, f"no screenshot of {url}"
    return dom


def text(dom: str) -> str:
    """What a person reads on the page: no scripts, styles or tags; spaces collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    dom = re.sub(r"</?(strong|em)>", "", dom)  # markdown's bold and italics sit inside words
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def listed_runs(dom: str) -> list[str]:
    """The run names the runs list renders as rows (a nested run shows once expanded)."""
    return re.findall(r'href="#/experiments/\d+/runs/[0-9a-f]{32}"><span[^>]*>([^<]+)<', dom)


def test_the_experiment_page_lists_the_study_as_one_row(served):
    e, s = served.experiment_id, served.study_run_id
    dom = render(
        f"{served.url}/#/experiments/{e}/runs?workflowType=machine_learning",
        served.shots / "experiment.png",
    )
    page = text(dom)
    assert "No data available" not in page  # the runs, not the GenAI trace overview
    # the description above the runs list: the studies view, then the study's own row
    assert "Studies, one row each: open the studies view" in page
    assert re.search(r"demo \d{4}-\d\d-\d\d \d\d:\d\d complete · 4/4 cells", page)
    assert f'href="{html.escape(notes.run_path(e, s))}"' in dom
    assert listed_runs(dom) == ["demo"]  # its sizes and trials nested under it


def test_the_printed_links_show_every_study_and_this_study_as_one_row(served, printed):
    assert set(printed) == {"study run", "its runs as one tree", "every study, one row"}
    studies = render(printed["every study, one row"], served.shots / "studies.png")
    tree = render(printed["its runs as one tree"], served.shots / "study_tree.png")
    assert listed_runs(studies) == ["demo"]
    runs = served.client.search_runs(
        [served.experiment_id], notes.study_filter(served.study_run_id)
    )
    assert listed_runs(tree) == ["demo"]  # all its runs, oldest first: the study holds the rest
    assert f"{len(runs)} matching runs" in text(tree)


def test_the_study_run_page_shows_the_summary_and_the_plots(served, printed):
    dom = render(printed["study run"], served.shots / "study_run.png")
    page, report = text(dom), json.loads((served.out / "report.json").read_text())
    assert "Description demo (complete): test MAE of y against the number n" in page
    assert f"Fit: {fit_sentence(report)}" in page
    assert "n=300" in page and "Extrapolation" in page and "Verdict" in page
    for d in report["diagnostics"]:
        assert d["message"] in page
    for plot in ("scaling.png", "backtest.png"):
        src = f"get-artifact?path={plot}&run_uuid={served.study_run_id}"
        assert f'<img src="{html.escape(src)}"' in dom
        with urllib.request.urlopen(f"{served.url}/{src}") as r:  # what the browser fetches
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    artifact = notes.artifact_path(served.experiment_id, served.study_run_id, "scaling.png")
    dom = render(f"{served.url}/{artifact}", served.shots / "scaling_artifact.png")
    assert re.search(r'<img alt="scaling.png" src="blob:', dom)  # the UI loaded and shows it


def test_a_size_run_lists_its_trials(served):
    c, e = served.client, served.experiment_id
    (run,) = c.search_runs([e], "tags.`s2r.kind` = 'size' and tags.`s2r.n` = '300'")
    url = f"{served.url}/{notes.run_path(e, run.info.run_id)}"
    dom = render(url, served.shots / "size_run.png")
    page = text(dom)
    assert "demo · n=300" in page and "Parent run demo" in page
    assert "Description demo · n=300: test MAE" in page
    children = c.search_runs([e], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert names == ["n=300 r0 trial 00", "n=300 r0 trial 01", "pretrain n=300 r0"]
    child_runs = page.split("Child runs", 1)[1].split("Source", 1)[0]
    assert all(name in child_runs for name in names)


SEARCHES = {
    "studies": "tags.s2r.kind = 'study'",
    "best trial": "tags.s2r.study = 'demo' and tags.s2r.n = '300' and tags.s2r.selected = 'true'",
    "size's trials": "tags.s2r.study = 'demo' and tags.s2r.kind = 'trial' and tags.s2r.n = '300'",
    "failed trials": (
        "tags.s2r.study = 'demo' and tags.s2r.kind = 'trial' and attributes.status = 'FAILED'"
    ),
    "capped pretraining": (
        "tags.s2r.study = 'demo' and tags.s2r.kind = 'pretrain' and metrics.converged = 0"
    ),
    "fit history": "tags.s2r.study = 'demo' and tags.s2r.kind = 'study'",
}


def test_the_readme_search_strings_find_what_they_say(served):
    readme = README.read_text()
    assert all(f"`{s}`" in readme for s in SEARCHES.values())
    c, e = served.client, [served.experiment_id]
    every = c.search_runs(e, "", max_results=1000)
    trials = [r for r in every if r.data.tags["s2r.kind"] == "trial"]
    c.set_terminated(trials[0].info.run_id, "FAILED")  # as a trial that raised or diverged ends
    found = {k: c.search_runs(e, s, max_results=1000) for k, s in SEARCHES.items()}

    assert [r.info.run_name for r in found["studies"]] == ["demo"]
    (selected,) = [r for r in StudyFolder(served.out).ledger() if r["n"] == 300]
    assert [r.data.params["trial_key"] for r in found["best trial"]] == [selected["best_trial"]]
    assert sorted(r.info.run_name for r in found["size's trials"]) == [
        "n=300 r0 trial 00",
        "n=300 r0 trial 01",
    ]
    assert [r.info.run_id for r in found["failed trials"]] == [trials[0].info.run_id]
    capped = {
        r.info.run_id
        for r in every
        if r.data.tags["s2r.kind"] == "pretrain" and r.data.metrics["converged"] == 0
    }
    assert {r.info.run_id for r in found["capped pretraining"]} == capped
    (study,) = found["fit history"]
    assert [m.step for m in c.get_metric_history(study.info.run_id, "alpha")] == [3]


def test_experiments_are_tagged_as_model_training(served):
    c = served.client
    assert c.get_experiment(served.experiment_id).tags[tracking.KIND_TAG] == tracking.TRAINING
    ctx = tracking.start_study(c.tracking_uri, "new one", "s", {}, [10], {})
    assert c.get_experiment(ctx.experiment_id).tags[tracking.KIND_TAG] == tracking.TRAINING
    # one made before s2r set an experiment's kind is tagged when a study joins it
    old = c.create_experiment("made by hand", str(served.out.parent / "by-hand"))
    assert tracking.KIND_TAG not in c.get_experiment(old).tags
    tracking.start_study(c.tracking_uri, "made by hand", "s", {}, [10], {})
    assert c.get_experiment(old).tags[tracking.KIND_TAG] == tracking.TRAINING
