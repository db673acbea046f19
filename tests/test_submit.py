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
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import call_within, gcs_probe, reports_usage
from mlflow.tracking import MlflowClient
from ray.job_submission import JobSubmissionClient

from s2r_ray.cli import main
from s2r_ray.local_servers import (
    LOOPBACK,
    Group,
    free_port,
    start_group,
    stop_group,
    wait_http,
)

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
CONFIG = "tests/micro_study.yaml"
TOKEN = "0123456789abcdef" * 2
FOLLOW_S = 600  # a micro study: about a minute on 2 busy cores; longer is a hang


@dataclass
class Cluster:
    """A `ray start` cluster on this machine's loopback: its dashboard URL and temp folder."""

    url: str
    temp: Path


@contextmanager
def ray_cluster(auth: dict[str, str], head_cpus: int = 2, workers: int = 0) -> Iterator[Cluster]:
    """`ray start --head --block` (and `workers` worker nodes of 2 CPUs), each in its own process
    group, bound to loopback, every port chosen here (other Ray instances on the machine keep
    theirs), HOME private (no ~/.ray/auth_token written or read), `s2r` on its PATH as on a
    cluster node. Stopping it must leave no process behind; its temp folder is removed."""
    temp = Path(tempfile.mkdtemp(prefix="s2r-", dir="/tmp"))  # short: Unix socket paths
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env |= {"HOME": str(temp), "PATH": f"{bin_dir}:{env.get('PATH', '')}", **auth}
    dashboard, gcs = free_port(), free_port()
    head = [f"{bin_dir}/ray", "start", "--head", "--port", str(gcs), "--temp-dir", str(temp)]
    head += ["--dashboard-host", LOOPBACK, "--dashboard-port", str(dashboard)]
    head += ["--include-dashboard", "true", "--ray-client-server-port", str(free_port())]
    worker = [f"{bin_dir}/ray", "start", "--address", f"{LOOPBACK}:{gcs}"]
    groups: list[Group] = []
    try:
        log = temp / "node0.log"
        groups.append(_start_node(head, head_cpus, log, env))
        url = f"http://{LOOPBACK}:{dashboard}"
        answer = 401 if auth["RAY_AUTH_MODE"] == "token" else 200
        wait_http(f"{url}/api/version", groups[0], 180, log, status=answer)
        for i in range(1, 1 + workers):
            groups.append(_start_node(worker, 2, temp / f"node{i}.log", env))
        if workers:
            _wait_for_nodes(gcs, 1 + workers, groups, temp, worker, env)
        answered = gcs_probe(f"{LOOPBACK}:{gcs}", env)  # as a client with the cluster's token
        assert "metadata" in answered and not reports_usage(answered["metadata"]), answered
        yield Cluster(url, temp)
    finally:
        for group in reversed(groups):
            stop_group(group, leader_first=True)
        assert not any(g.members() for g in groups), "processes of the Ray cluster survived"
        shutil.rmtree(temp, ignore_errors=True)


def _start_node(args: list[str], cpus: int, log: Path, env: dict[str, str]) -> Group:
    """One `ray start --block`, every port of its own chosen free just before it starts."""
    args = [*args, "--block", "--node-ip-address", LOOPBACK, "--num-cpus", str(cpus)]
    args += ["--disable-usage-stats"]
    for flag in (
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--node-manager-port",
        "--object-manager-port",
    ):
        args += [flag, str(free_port())]
    return start_group(args, log, env)


def _wait_for_nodes(
    gcs: int,
    count: int,
    groups: list[Group],
    temp: Path,
    worker: list[str],
    env: dict[str, str],
    timeout_s: float = 180,
) -> None:
    """Until every node is alive, as `ray list nodes` sees them. A worker whose `ray start`
    ended meanwhile (a port another process took between choosing and binding it: the machine
    is shared) is started once more with fresh ports, kept in `groups` beside the ended one (so
    that stopping the cluster stops what either left); a timeout names what each node logged."""
    deadline = time.monotonic() + timeout_s
    cmd = [str(Path(sys.executable).parent / "ray"), "list", "nodes", "--format", "json"]
    cmd += ["--address", f"{LOOPBACK}:{gcs}", "--filter", "state=ALIVE"]
    restarted: set[int] = set()
    done = None
    while time.monotonic() < deadline:
        for i, group in enumerate(groups[1:count], start=1):
            if group.proc.poll() is not None and i not in restarted:
                restarted.add(i)
                groups.append(_start_node(worker, 2, temp / f"node{i}.log", env))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        listed = done.stdout.strip() if done.returncode == 0 else ""
        if listed.startswith("[") and len(json.loads(listed)) >= count:  # or "No resource"
            return
        time.sleep(1)
    logs = "\n".join(
        f"--- node{i} (exit {groups[i].proc.poll()}):\n" + _tail(temp / f"node{i}.log")
        for i in range(count)
    )
    listed = f"{done.stdout[-500:]}{done.stderr[-1500:]}" if done else ""
    raise AssertionError(
        f"the cluster did not reach {count} alive nodes in {timeout_s:.0f} s "
        f"(restarted: {sorted(restarted)})\n`ray list nodes`: {listed}\n{logs}"
    )


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@contextmanager
def ray_head(auth: dict[str, str]) -> Iterator[str]:
    """A one-node cluster; yields its dashboard URL."""
    with ray_cluster(auth) as cluster:
        yield cluster.url


def suite_auth() -> dict[str, str]:
    """The suite's own token (tests/conftest.py): a head started here asks for it."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    with ray_head(suite_auth()) as url:
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


def test_a_submitted_study_keeps_its_artifacts_after_the_cluster_is_gone(
    tmp_path, capsys, monkeypatch
):
    """The path users take: a head without CPUs and a worker node as separate `ray start`
    processes, the tracking store named only by MLFLOW_TRACKING_URI (as on a cluster), `s2r
    submit`. The experiment is created by the job's driver, which runs in Ray's unpacked copy
    of the project; its artifacts must still land beside the store, so they outlive the
    cluster and its temporary folder."""
    monkeypatch.chdir(REPO)
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with ray_cluster(suite_auth(), head_cpus=0, workers=1) as cluster:
        assert main(["submit", CONFIG, "--address", cluster.url, "--out", str(out)]) == 0
        job = re.search(r"as job (\S+) to ", capsys.readouterr().out).group(1)
        status = _wait_for_job(cluster.url, job, timeout_s=600)
        logs = JobSubmissionClient(cluster.url).get_job_logs(job)
        assert status == "SUCCEEDED", logs[-6000:]
        temp = cluster.temp
    assert not temp.exists()  # the cluster and everything Ray kept for it are gone

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("s2r-ray")
    print(f"\nexperiment artifact location: {exp.artifact_location}")
    assert exp.artifact_location == str(tmp_path / "mlartifacts")
    assert f"artifacts in {tmp_path / 'mlartifacts'}" in logs
    study_run = json.loads((out / "study.json").read_text())["mlflow"]["study_run_id"]
    stored = {a.path for a in client.list_artifacts(study_run)}
    assert {"report.json", "scaling.png", "report.html", "cells.jsonl"} <= stored, stored
    fetched = Path(client.download_artifacts(study_run, "report.json", str(tmp_path / "dl")))
    assert json.loads(fetched.read_text()) == json.loads((out / "report.json").read_text())


def _wait_for_job(url: str, job: str, timeout_s: float) -> str:
    """The job's final status; fails with its logs when it has not ended in `timeout_s`."""
    client = JobSubmissionClient(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job).value
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(
        f"job {job} did not end within {timeout_s:.0f} s: {client.get_job_logs(job)[-3000:]}"
    )


def test_an_installed_package_ships_the_folder_and_installs_itself(tmp_path, monkeypatch):
    """Outside a checkout the job gets the user's folder and pip-installs s2r-ray: by default
    the version installed here, else the requirement given (a wheel travels in the folder)."""
    from importlib.metadata import version

    from ray.runtime_env import RuntimeEnv

    from s2r_ray.study import submit

    assert submit.ships_the_code(REPO) and submit.requirement(None, REPO) is None
    folder = tmp_path / "study"
    (folder / "dist").mkdir(parents=True)
    shutil.copy(REPO / CONFIG, folder / "micro.yaml")
    wheel = folder / "dist" / "s2r_ray-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"x" * 1000)
    (folder / ".gitignore").write_text("*.csv\n")
    (folder / "big.csv").write_bytes(b"x" * 10**6)  # .gitignore'd
    (folder / "runs").mkdir()
    (folder / "runs" / "old.json").write_text("{}")  # never shipped
    monkeypatch.chdir(folder)

    assert not submit.ships_the_code(folder)
    default = submit.requirement(None, folder)
    assert default == f"s2r-ray=={version('s2r-ray')}"
    assert submit.requirement("none", folder) is None
    assert submit.requirement("s2r-ray==0.1.0", folder) == "s2r-ray==0.1.0"
    in_folder = "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/dist/s2r_ray-0.1.0-py3-none-any.whl"
    assert submit.requirement("dist/s2r_ray-0.1.0-py3-none-any.whl", folder) == in_folder
    shutil.copy(wheel, tmp_path / wheel.name)
    with pytest.raises(submit.JobsError, match="a wheel must be inside the folder that is shipped"):
        submit.requirement(str(tmp_path / wheel.name), folder)

    size = (folder / "micro.yaml").stat().st_size + 1000 + len("*.csv\n")
    assert submit.shipped_size(folder) == (3, size)
    assert submit.shipping_line(folder, default) == (
        f"shipping {folder} (3 files, {size / 2**20:.1f} MiB); the job installs {default} "
        "(--requirement to change)"
    )
    env = submit.runtime_env(folder, in_folder)
    assert env["pip"] == {"packages": [in_folder], "pip_check": False}
    assert RuntimeEnv(**env).has_pip() and "pip" not in submit.runtime_env(folder, None)


def test_a_shipped_config_is_submitted_by_name(tmp_path, monkeypatch, capsys):
    """`s2r submit demo` from an empty folder: validated here, sent as the name (the job's s2r
    has the same shipped configs); a cluster that is not there is still one line."""
    monkeypatch.chdir(tmp_path)
    address = f"http://{LOOPBACK}:{free_port()}"
    assert main(["submit", "demo", "--address", address, "--requirement", "none"]) == 2
    assert f"no Ray dashboard answers at {address}" in capsys.readouterr().err
    assert main(["submit", "nope", "--address", address]) == 2
    assert "nope: no such config file, nor a shipped config" in capsys.readouterr().err
