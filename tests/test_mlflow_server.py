"""A micro study logging over HTTP to a real `mlflow server` on a free loopback port, from Ray
workers, as on a cluster: the run hierarchy and the study run's artifacts are read back through
the server, and the artifacts live in the server's store, not beside the driver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from s2r_ray.config import load_config
from s2r_ray.local_servers import mlflow_server
from s2r_ray.study.driver import run_study

pytestmark = pytest.mark.ray

CONFIG = Path(__file__).with_name("micro_study.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(folder) as uri:
        yield uri, folder


@pytest.fixture(scope="module")
def study(ray_session, server, tmp_path_factory):
    uri, folder = server
    cfg = load_config(CONFIG, [f"tracking.uri={uri}"])
    out = tmp_path_factory.mktemp("study") / "out"
    report = run_study(cfg, out, echo=lambda line: None)
    return cfg, out, report, MlflowClient(uri), folder


def _runs(client: MlflowClient, kind: str) -> list:
    exp = client.get_experiment_by_name("s2r-ray")
    return client.search_runs([exp.experiment_id], f"tags.`s2r.kind` = '{kind}'", max_results=500)


def test_the_run_hierarchy_reads_back_through_the_server(study):
    cfg, _, report, client, _ = study
    assert report["mlflow"]["tracking_uri"] == client.tracking_uri
    (study_run,) = _runs(client, "study")
    assert study_run.info.run_id == report["mlflow"]["study_run_id"]
    sizes = _runs(client, "size")
    assert sorted(int(r.data.tags["s2r.n"]) for r in sizes) == [0, *cfg.sizes]
    assert {r.data.tags["mlflow.parentRunId"] for r in sizes} == {study_run.info.run_id}
    size_ids = {r.info.run_id for r in sizes}
    trials, pretrains = _runs(client, "trial"), _runs(client, "pretrain")
    cells = (len(cfg.sizes) + 1) * cfg.repetitions
    assert len(trials) == cells * cfg.tune.trials_per_cell
    assert len(pretrains) == len(cfg.sizes) * cfg.repetitions
    assert {r.data.tags["mlflow.parentRunId"] for r in trials + pretrains} <= size_ids
    # logged by the trials themselves, in Ray workers, over HTTP
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, "val_mae")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert trial.data.params["device"] == "cpu"


def test_the_study_artifacts_are_served_and_stored_by_the_server(study, tmp_path):
    _, out, report, client, folder = study
    (study_run,) = _runs(client, "study")
    run_id = study_run.info.run_id
    assert {"report.json", "scaling.png"} <= {a.path for a in client.list_artifacts(run_id)}
    fetched = Path(client.download_artifacts(run_id, "report.json", str(tmp_path)))
    served = json.loads(fetched.read_text())
    assert served["status"] == "complete" and served["sizes"] == report["sizes"]
    png = Path(client.download_artifacts(run_id, "scaling.png", str(tmp_path)))
    assert png.read_bytes() == (out / "scaling.png").read_bytes()
    assert study_run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    stored = {p.name for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"report.json", "scaling.png"} <= stored
