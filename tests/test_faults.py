"""A study survives what a cluster does to it: kill -9, SIGTERM, diverging trials, a dead trial
process, a lost node, resources no node has. Real processes, real Ray, real MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from faults import (
    REPO,
    StudyProcess,
    call_within,
    kill_ray_processes,
    ledger_lines,
    reports_usage,
    runs,
    study_killing_trial_actors,
    wait_for,
    write_config,
)
from mlflow.tracking import MlflowClient

from s2r_ray.config import ConfigError, build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.study.driver import run_study

pytestmark = pytest.mark.ray

# Deterministic per cell (see the file): an interrupted and an uninterrupted run give the same
# MAE for every cell they both finished.
CHAIN = yaml.safe_load((REPO / "tests" / "chain_study.yaml").read_text())
CELLS, TRIALS, PRETRAININGS = 8, 16, 6


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """The same study, uninterrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = build_config({**CHAIN, "tracking": {"uri": f"sqlite:///{tmp / 'm.db'}"}})
    run_study(cfg, tmp / "out", echo=lambda line: None)
    return {r["cell"]: r["mae"] for r in StudyFolder(tmp / "out").ledger()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """kill -9 after two cells, resume, SIGTERM, resume to the end: what each step left."""
    tmp = tmp_path_factory.mktemp("chain")
    config, out, db = write_config(tmp / "chain.yaml", CHAIN), tmp / "out", tmp / "m.db"
    steps: dict = {}
    procs: list[StudyProcess] = []
    try:
        killed = StudyProcess(config, out, db)
        procs.append(killed)
        wait_for(lambda: len(ledger_lines(out)) >= 2, 300, "two cells", killed)
        killed.kill_group()
        steps["killed"] = {
            "cells": {r["cell"] for r in ledger_lines(out)},
            "pretrained": StudyFolder(out).pretrained_keys(),
            "leftover_ray_processes": kill_ray_processes(killed.ray_tmp),
        }

        resumed = StudyProcess(config, out, db)
        procs.append(resumed)

        def new_trials() -> list[float]:
            starts = [r.info.start_time / 1000 for r in runs(db, "trial")]
            return [t for t in starts if t > resumed.started]

        wait_for(lambda: bool(new_trials()), 300, "a new trial", resumed)
        first_trial = min(new_trials())
        sent = time.time()
        resumed.proc.send_signal(signal.SIGTERM)
        # a hang guard, not a speed check: it exits within seconds; a hang fails here
        code, stdout, stderr = resumed.wait(timeout=300, what=" after SIGTERM")
        steps["terminated"] = {
            "code": code,
            "stdout": stdout,
            "stderr": stderr,
            "seconds_to_exit": time.time() - sent,
            "seconds_to_first_trial": first_trial - resumed.started,
            "report": json.loads((out / "report.json").read_text()),
            "running_runs": MlflowClient(f"sqlite:///{db}").search_runs(
                ["1"], "attributes.status = 'RUNNING'"
            ),
        }

        finished = StudyProcess(config, out, db)
        procs.append(finished)
        code, stdout, stderr = finished.wait(timeout=600, what=" resuming to the end")
        steps["finished"] = {"code": code, "stdout": stdout, "stderr": stderr}
        print(
            f"restart to first new trial: {steps['terminated']['seconds_to_first_trial']:.1f} s;"
            f" SIGTERM to exit: {steps['terminated']['seconds_to_exit']:.1f} s; trial runs"
            f" {len(runs(db, 'trial'))} for {TRIALS} planned; pretrainings on disk at the kill"
            f" {len(steps['killed']['pretrained'])}, finished runs"
            f" {len(runs(db, 'pretrain', 'FINISHED'))} for {PRETRAININGS}"
        )
    finally:
        for p in procs:
            p.cleanup()
    return out, db, steps


def test_sigterm_stops_cleanly_and_says_how_to_resume(chain):
    _, _, steps = chain
    t = steps["terminated"]
    assert "resuming: " in t["stdout"] and "pretrainings on disk" in t["stdout"]
    assert t["code"] == 128 + signal.SIGTERM, t["stderr"]
    assert "Traceback" not in t["stderr"]
    assert "resume with: s2r run" in t["stderr"] and "--out" in t["stderr"]
    assert t["report"]["status"] == "interrupted"
    assert t["running_runs"] == []  # no MLflow run left RUNNING


def test_a_killed_study_resumes_without_losing_or_repeating_work(chain, reference):
    out, db, steps = chain
    f = steps["finished"]
    assert f["code"] == 0, f["stderr"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete"
    # one study, one ledger record per cell
    assert len(runs(db, "study")) == 1
    cells = [r["cell"] for r in ledger_lines(out)]
    assert len(cells) == len(set(cells)) == CELLS
    # every planned trial ran to its end once; only trials in flight at a stop ran again
    assert len(runs(db, "trial", "FINISHED")) == TRIALS
    assert len(runs(db, "trial")) <= TRIALS + 2 * 2
    # a pretraining that had finished before the kill was never run again
    assert len(steps["killed"]["pretrained"]) >= 1
    assert len(runs(db, "pretrain", "FINISHED")) == PRETRAININGS
    # the cells finished before the kill have exactly the uninterrupted run's results
    maes = {r["cell"]: r["mae"] for r in ledger_lines(out)}
    for cell in steps["killed"]["cells"]:
        assert maes[cell] == pytest.approx(reference[cell], rel=1e-9), cell
    assert report["timing"]["trials"] == TRIALS


def test_running_a_finished_study_again_runs_nothing(chain):
    out, db, _ = chain
    trials = len(runs(db, "trial"))
    proc = StudyProcess(out / "config.yaml", out, db)
    try:
        code, stdout, _ = proc.wait(timeout=300, what=" on a finished study, which runs nothing")
    finally:
        proc.cleanup()
    assert code == 0 and "already complete" in stdout and "E(n) = D·n^−α + C with" in stdout
    assert len(runs(db, "trial")) == trials
    assert len(ledger_lines(out)) == CELLS


def test_diverging_training_fails_trials_and_cells_not_the_study(ray_session, tmp_path):
    """Pretraining at lr 1e30 diverges (its cells fail without trials); fine-tuning rates drawn
    up to 1e30 make some baseline trials diverge (FAILED runs; the cell keeps the others)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    raw = {
        **CHAIN,
        "sizes": [40],
        "pretrain": {"lr": 1e30, "max_steps": 200},
        "finetune": {"lr": [1e-3, 1e30], "epochs": [3, 5]},
        "tracking": {"uri": uri},
    }
    report = run_study(build_config(raw), tmp_path / "out", echo=lambda line: None)
    assert report["status"] == "complete"
    records = {r["cell"]: r for r in StudyFolder(tmp_path / "out").ledger()}
    assert len(records) == 4
    for cell in ("n40-mall-r0", "n40-mall-r1"):
        assert records[cell]["status"] == "failed"
        assert (
            "pretraining failed" in records[cell]["error"] and "diverged" in records[cell]["error"]
        )
    failed_trials = runs(tmp_path / "m.db", "trial", "FAILED")
    assert failed_trials, "some fine-tuning rates near 1e30 must diverge"
    assert sum(r.get("failed_trials", 0) for r in records.values()) == len(failed_trials)
    failed_cells = sum(r["status"] == "failed" for r in records.values())
    assert report["counts"]["cells_failed"] == failed_cells >= 2
    assert any(d["code"] == "failed_cells" for d in report["diagnostics"])
    assert not runs(tmp_path / "m.db", "pretrain", "RUNNING")


def test_a_trial_whose_process_dies_is_retried(ray_session, tmp_path):
    """kill -9 of the trial actors' processes mid-trial: Tune retries the trials."""
    db, out = tmp_path / "m.db", tmp_path / "out"
    raw = {
        **CHAIN,
        "sizes": [40],
        "repetitions": 1,
        "finetune": {"epochs": [100, 150]},
        "tune": {"trials_per_cell": 2, "startup_trials": 2, "grace_period": 151},
        "tracking": {"uri": f"sqlite:///{db}"},
    }

    def a_trial_runs_after_pretraining() -> bool:
        # pretraining has ended, so the busy trial actors hold trials, or at most the baseline
        # cell's scoring job
        if not StudyFolder(out).pretrained_keys():
            return False
        keys = [r.data.params.get("trial_key", "") for r in runs(db, "trial", "RUNNING")]
        return any(k.startswith("n40-") for k in keys)

    report, kill = study_killing_trial_actors(
        build_config(raw), out, a_trial_runs_after_pretraining
    )
    first = f", {kill.at:.1f} s after the start" if kill.pids else ""
    print(f"trial actors killed: {len(kill.pids)}{first}")
    assert kill.pids, "the study ended before a trial actor ran after pretraining: none was killed"
    assert report["status"] == "complete"
    records = StudyFolder(out).ledger()
    assert [r["status"] for r in records] == ["ok", "ok"]
    trial_keys = [r.data.params["trial_key"] for r in runs(db, "trial")]
    finished = [r.data.params["trial_key"] for r in runs(db, "trial", "FINISHED")]
    assert len(finished) == len(set(finished)) == 4  # 2 cells x 2 trials, each finished once
    assert 4 < len(trial_keys) <= 4 + len(kill.pids) and set(trial_keys) == set(finished)
    assert not runs(db, "trial", "RUNNING")


def test_an_impossible_pretraining_bundle_is_an_error_naming_the_field(ray_session, tmp_path):
    raw = {
        **CHAIN,
        "tune": {"pretrain_resources": {"cpu": 1, "gpu": 1}},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"},
    }
    start = time.time()
    with pytest.raises(
        ConfigError, match=r"tune.pretrain_resources: \{cpu: 1, gpu: 1\} fits on no"
    ):
        # an error, not a hang: it comes within seconds; a hang fails here, not a slow machine
        call_within(
            lambda: run_study(build_config(raw), tmp_path / "out", echo=lambda line: None),
            300,
            "run_study with a pretraining bundle no node has",
        )
    print(f"the impossible bundle's error came after {time.time() - start:.1f} s")
    assert StudyFolder(tmp_path / "out").state()["status"] == "failed"


CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path

    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from s2r_ray.config import build_config
    from s2r_ray.folder import StudyFolder
    from s2r_ray.study.driver import run_study

    cfg, out, db = build_config(json.loads(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
    # a head that runs no work (as on most clusters) and two workers: the work of the lost one
    # can only go to the other, whose CPUs Tune's trial actors hold
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = {n.node_id: n for n in (cluster.add_node(num_cpus=2), cluster.add_node(num_cpus=2))}
    ray.init(address=cluster.address)
    from ray.experimental.internal_kv import _internal_kv_get
    metadata = json.loads(_internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster"))
    lost = {"cluster_metadata": metadata}

    def running_pretraining():
        client = MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("s2r-ray")
        query = "tags.`s2r.kind` = 'pretrain' and attributes.status = 'RUNNING'"
        for run in client.search_runs([exp.experiment_id], query) if exp else []:
            if run.data.params.get("ray_node") in workers:
                return run
        return None

    def remove_a_node_while_it_pretrains():
        folder = StudyFolder(out)
        while not (folder.ledger() and (run := running_pretraining())):
            time.sleep(0.2)
        lost["pretraining"] = f"n{run.data.params['n']}-r{run.data.params['repetition']}"
        lost["cells_before"] = len(folder.ledger())
        lost["pretrained_before"] = sorted(folder.pretrained_keys())
        lost["at"] = time.time()
        cluster.remove_node(workers[run.data.params["ray_node"]], allow_graceful=False)

    threading.Thread(target=remove_a_node_while_it_pretrains, daemon=True).start()
    try:
        report = run_study(cfg, out, echo=print)
        lost["seconds_after"] = time.time() - lost["at"]
        print("RESULT " + json.dumps({"status": report["status"], **lost}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


def test_a_study_survives_losing_a_node_in_the_middle_of_a_pretraining(tmp_path):
    """Two worker nodes on this machine (ray.cluster_utils.Cluster); the one running a
    pretraining is removed with it, its trials and whatever its object store held. The
    pretraining runs again on the other node, whose CPUs Tune's trial actors held (a study
    hung here when pretraining ran beside Tune); the study completes every cell, and no
    network that had reached the study folder is computed again."""
    db = tmp_path / "m.db"
    raw = {
        **CHAIN,
        # slower pretraining (a few seconds each), one at a time: one is caught running
        "data": {"synthetic": {**CHAIN["data"]["synthetic"], "n_source": 3000}},
        "pretrain": {"patience": 40, "max_steps": 30000},
        "tune": {**CHAIN["tune"], "max_failures": 3, "pretrain_slots": 1},
        "tracking": {"uri": f"sqlite:///{db}"},
    }
    script = tmp_path / "cluster_study.py"
    script.write_text(CLUSTER_SCRIPT)
    ray_tmp = f"/tmp/s2rc{os.getpid()}"
    env = os.environ | {"RAY_TMPDIR": ray_tmp}
    try:
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(raw), str(tmp_path / "out"), str(db)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as hung:
        tail = [
            (v if isinstance(v, str) else (v or b"").decode(errors="replace"))[-3000:]
            for v in (hung.stdout, hung.stderr)
        ]
        raise AssertionError(
            f"the study that loses a node did not end within 600 s: it hangs; {tail}"
        ) from None
    finally:
        kill_ray_processes(ray_tmp)
    result = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert result, done.stdout[-3000:] + done.stderr[-3000:]
    lost = json.loads(result[0].removeprefix("RESULT "))
    rerun = len(runs(db, "trial")) - TRIALS
    print(f"lost node: {lost}; trials run again: {rerun}")
    assert lost["status"] == "complete"
    assert not reports_usage(lost["cluster_metadata"]), lost["cluster_metadata"]
    assert lost["pretraining"] not in lost["pretrained_before"]
    records = StudyFolder(tmp_path / "out").ledger()
    assert len(records) == CELLS and all(r["status"] == "ok" for r in records)
    # every pretraining finished exactly once; those lost (the one caught running and its
    # pack-mates: pretrainings of one n train as one) have one more run each, ended KILLED
    finished = [r.info.run_name for r in runs(db, "pretrain", "FINISHED")]
    assert len(finished) == len(set(finished)) == PRETRAININGS
    lost_runs = [r for r in runs(db, "pretrain") if r.info.status != "FINISHED"]
    assert {r.info.status for r in lost_runs} == {"KILLED"}
    assert 1 <= len(lost_runs) <= max(int(r.data.params["pack_size"]) for r in lost_runs)
    keys = {f"n{r.data.params['n']}-r{r.data.params['repetition']}" for r in lost_runs}
    assert lost["pretraining"] in keys and not keys & set(lost["pretrained_before"])
    # the trials on the lost node ran again, or, once their retries were spent, failed
    finished = {r.data.params["trial_key"] for r in runs(db, "trial", "FINISHED")}
    assert len(finished) >= TRIALS - 2 and len(runs(db, "trial")) <= TRIALS + 2
    assert not runs(db, "trial", "RUNNING") and not runs(db, "pretrain", "RUNNING")
