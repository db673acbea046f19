"""`s2r submit` and `s2r jobs` against a real Ray head whose dashboard listens on a free loopback
port: a micro study runs as a Ray job to completion, and a bad config never reaches the head."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from faults import call_within
from mlflow.tracking import MlflowClient
from ray.job_submission import JobSubmissionClient

from s2r_ray.cli import main
from s2r_ray.local_servers import LOOPBACK, free_port, start_group, stop_group, wait_http

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
CONFIG = "tests/micro_study.yaml"
TOKEN = "0123456789abcdef" * 2
FOLLOW_S = 600  # a micro study: about a minute on 2 busy cores; longer is a hang


@contextmanager
def ray_head(auth: dict[str, str]) -> Iterator[str]:
    """`ray start --head --block` in its own process group, every port chosen here (other Ray
    instances on the machine keep theirs), HOME private (no ~/.ray/auth_token written or read),
    `s2r` on its PATH as on a cluster node. Yields the dashboard URL; stopping it must leave no
    process behind."""
    temp = Path(tempfile.mkdtemp(prefix="s2r-", dir="/tmp"))  # short: Unix socket paths
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env |= {"HOME": str(temp), "PATH": f"{bin_dir}:{env.get('PATH', '')}", **auth}
    dashboard = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--dashboard-agent-listen-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    args = [f"{bin_dir}/ray", "start", "--head", "--block", "--node-ip-address", LOOPBACK]
    args += ["--dashboard-host", LOOPBACK, "--temp-dir", str(temp), "--num-cpus", "2"]
    args += ["--include-dashboard", "true", "--disable-usage-stats"]
    args += [str(w) for flag, port in ports.items() for w in (flag, port)]
    log = temp / "head.log"
    group = start_group(args, log, env)
    try:
        url = f"http://{LOOPBACK}:{dashboard}"
        answer = 401 if auth["RAY_AUTH_MODE"] == "token" else 200
        wait_http(f"{url}/api/version", group, 180, log, status=answer)
        yield url
    finally:
        stop_group(group, leader_first=True)
        assert not group.members(), "processes of the Ray head survived its stop"
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    with ray_head({"RAY_AUTH_MODE": "disabled"}) as url:
        yield url


def _jobs(head: str) -> list[str]:
    return [j.submission_id for j in JobSubmissionClient(head).list_jobs()]


def test_no_cluster_at_the_address_is_one_line(capsys):
    address = f"http://{LOOPBACK}:{free_port()}"
    assert main(["jobs", "list", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no Ray dashboard answers at {address}" in err


def _s2r(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`s2r` in a fresh process: Ray reads its auth settings once per process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [sys.executable, "-m", "s2r_ray.cli", *args]
    return subprocess.run(cmd, env=clean | env, capture_output=True, text=True, timeout=120)


def test_a_cluster_with_token_auth_and_no_token_here_is_one_line():
    with ray_head({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}) as url:
        refused = _s2r(["jobs", "list", "--address", url], RAY_AUTH_MODE="disabled")
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and "needs its auth token" in refused.stderr
        with_token = _s2r(
            ["jobs", "list", "--address", url], RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN
        )
        assert with_token.returncode == 0, with_token.stderr


def test_a_bad_config_never_reaches_the_cluster(head, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    before = _jobs(head)
    argv = ["submit", CONFIG, "--address", head, "--set", "tune.trials_per_cell=0"]
    assert main(argv) == 2
    assert "tune.trials_per_cell" in capsys.readouterr().err
    assert _jobs(head) == before


def test_a_study_runs_as_a_job(head, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlruns.db'}"
    submitted = time.time()
    argv = ["submit", CONFIG, "--address", head, "--out", str(out), "--set", f"tracking.uri={uri}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    job = re.search(r"as job (\S+) to ", printed).group(1)
    assert f"s2r jobs logs {job} --follow --address {head}" in printed
    assert "note:" not in printed  # absolute folder and store: nothing lands in the job's copy

    # follows until the job ends; one that never ends fails the test, stopped, with its status
    follow = ["jobs", "logs", job, "--follow", "--address", head]
    try:
        code = call_within(lambda: main(follow), FOLLOW_S, f"following the logs of job {job}")
    except AssertionError as hung:
        status = JobSubmissionClient(head).get_job_status(job)
        main(["jobs", "stop", job, "--address", head])
        pytest.fail(f"{hung}: the job had not ended (status {status})")
    assert code == 0
    followed = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nsubmit to the end of the job: {time.time() - submitted:.1f} s")
    assert main(["jobs", "status", job, "--address", head]) == 0
    assert capsys.readouterr().out.startswith(f"{job}: SUCCEEDED")
    assert main(["jobs", "logs", job, "--address", head]) == 0
    logs = capsys.readouterr().out
    for text in (followed, logs):
        assert "study micro (complete): test MAE" in text and f"report: {out}" in text
    assert main(["jobs", "list", "--address", head]) == 0
    assert re.search(rf"^{job}\s+SUCCEEDED\s", capsys.readouterr().out, re.M)
    assert main(["jobs", "stop", job, "--address", head]) == 0
    assert capsys.readouterr().out.strip() == f"{job}: already ended"

    # the job's driver wrote the study folder on the head and logged to the given store
    assert json.loads((out / "report.json").read_text())["status"] == "complete"
    records = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["device"] for r in records} == {"cpu"}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("s2r-ray")
    trials = client.search_runs([exp.experiment_id], "tags.`s2r.kind` = 'trial'")
    assert len(trials) == 6
    first = min(r.info.start_time for r in trials) / 1000
    with capsys.disabled():
        print(f"\nsubmit to first trial: {first - submitted:.1f} s")
