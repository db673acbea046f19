"""A local study's Ray stays on this machine and closed: `s2r run` without an address starts its
own Ray whatever an earlier cluster left behind, reports no usage, and every port it opens
beyond loopback asks for a token. Run as a user runs it: a real `s2r run` process, its own Ray
temp folder, a HOME of its own (so the token Ray makes is not this machine's), none of the
suite's Ray settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from faults import REPO, StudyProcess, gcs_probe, reports_usage, runs, wait_for

from s2r_ray.local_servers import free_port

pytestmark = pytest.mark.ray

LOOPBACKS = ("127.0.0.1", "::1")


def ray_processes(ray_tmp: str) -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_TMPDIR") == ray_tmp:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    return found


def listening(procs: dict[int, psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket these processes listen on."""
    table = []
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            with_name = procs[conn.pid].name() if procs[conn.pid].is_running() else "?"
            table.append((conn.laddr.ip, conn.laddr.port, with_name))
    return sorted(table)


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user who never heard of these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    return env | {"HOME": str(home)}


def test_a_local_study_is_its_own_closed_ray_whatever_a_dead_cluster_left(tmp_path):
    """A dead `ray start --head` leaves `ray_current_cluster` naming a GCS that is gone;
    `s2r run` still starts its own Ray. While the study runs: each port beyond loopback belongs
    to a process that asks for a token, a client without one is refused, one with the user's
    token is answered, and the cluster's metadata says usage reporting is off."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="s2r", dir="/tmp")  # short: Unix socket paths
    stale = Path(ray_tmp) / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True)
    stale.write_text(f"127.0.0.1:{free_port()}")
    config = REPO / "tests" / "micro_study.yaml"
    study = StudyProcess(
        config, tmp_path / "out", tmp_path / "m.db", env=user_env(home), ray_tmp=ray_tmp
    )
    try:
        wait_for(lambda: runs(tmp_path / "m.db", "trial"), 300, "the first trial", study)
        procs = ray_processes(study.ray_tmp)
        table = listening(procs)
        print("\nlistening sockets of the local study's Ray:")
        print("\n".join(f"  {ip:<16} {port:>6}  {name}" for ip, port, name in table))
        assert table, "found no Ray process of the study listening"
        started = {pid: p for pid, p in procs.items() if pid != study.proc.pid}
        for pid, proc in started.items():  # the driver's own settings are made in Python
            assert proc.environ().get("RAY_USAGE_STATS_ENABLED") == "0", (pid, proc.name())
        for ip, port, name in table:
            if ip not in LOOPBACKS and name != "python3":  # the driver: see the probes below
                owner = next(p for p in started.values() if p.is_running() and p.name() == name)
                assert owner.environ().get("RAY_AUTH_MODE") == "token", (ip, port, name)
        gcs = next(
            f"127.0.0.1:{port}" for ip, port, name in table if name == "gcs_server"
        )  # any interface reaches it: the question is whether it asks for a token
        refused = gcs_probe(gcs, user_env(home) | {"RAY_AUTH_MODE": "disabled"})
        assert "refused" in refused and "token" in refused["refused"].lower(), refused
        answered = gcs_probe(gcs, user_env(home) | {"RAY_AUTH_MODE": "token"})
        assert "metadata" in answered, answered
        assert not reports_usage(answered["metadata"]), answered["metadata"]
        code, out, err = study.wait(timeout=600)
        assert code == 0, err[-3000:]
        assert "study micro (complete)" in out
        assert (home / ".ray" / "auth_token").is_file()  # Ray's own token, made for this user
    finally:
        study.cleanup()


def test_an_address_where_no_ray_answers_is_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "s2r_ray.cli", "run", "tests/micro_study.yaml"]
    cmd += ["--out", str(tmp_path / "out"), "--address", address]
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"s2r: error: --address {address}: no Ray answers at {address}; start the cluster "
        "(ray start --head), or leave --address and RAY_ADDRESS unset for a local Ray"
    ], done.stderr[-2000:]


def test_the_suites_own_ray_reports_no_usage(ray_session):
    """The session's local Ray (tests/conftest.py), as every other kind the suite starts: the
    Cluster of the lost-node test and the `ray start` heads of test_submit check theirs."""
    from ray.experimental.internal_kv import _internal_kv_get

    metadata = json.loads(_internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster"))
    assert metadata["ray_version"] and not reports_usage(metadata), metadata
