"""cluster/slurm/ray_cluster.sbatch run for real under a fake SLURM: a 2-node job whose both nodes
are this machine. The script's own Ray head, Ray worker and MLflow server come up on loopback
ports chosen here, a micro study completes through them, and when the script exits nothing it
started is left running."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from s2r_ray.local_servers import LOOPBACK, free_port, start_group, stop_group

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "cluster" / "slurm" / "ray_cluster.sbatch"
NODES = ("node1", "node2")

# srun: every node is this machine, so a step is its command run here (one task per step).
SRUN = """#!/bin/bash
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in -w|-N|-n|-c) shift 2 ;; *) shift ;; esac
done
exec "$@"
"""
SCONTROL = f"""#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] && printf '%s\\n' {" ".join(NODES)}
"""


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def _ports(*flags: str) -> str:
    return " ".join(f"{flag}={free_port()}" for flag in flags)


def test_the_sbatch_script_runs_a_study_and_leaves_nothing_behind(tmp_path):
    _fake_slurm(tmp_path / "bin")
    ray_tmp = Path(tempfile.mkdtemp(prefix="s2r-", dir="/tmp"))  # short: Unix socket paths
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    env |= {
        "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{env['PATH']}",
        "HOME": str(tmp_path),  # the job's token file goes to ~/.ray
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURMD_NODENAME": NODES[0],
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_CPUS_PER_TASK": "1",
        "HEAD_IP": LOOPBACK,
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_WORKERS": "1",
        "RAY_HEAD_ARGS": _ports("--ray-client-server-port", "--dashboard-agent-listen-port"),
        "RAY_WORKER_ARGS": _ports("--dashboard-agent-listen-port"),
        "CONFIG": "tests/micro_study.yaml",
        "OUT": str(out),
        "WAIT_NODES_S": "120",
    }
    log = tmp_path / "job.log"
    job = start_group(["bash", str(SBATCH)], log, env)
    try:
        rc = job.proc.wait(timeout=420)
        text = log.read_text()
        assert rc == 0, text[-4000:]
        assert not job.members(), f"left running: {job.members()}\n{text[-2000:]}"
    finally:
        stop_group(job, leader_first=True)  # only if it is still running: its own clean-up
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert "Ray: 2/2 nodes up" in text and "s2r run exited with 0" in text
    assert "study micro (complete)" in text
    assert json.loads((out / "report.json").read_text())["status"] == "complete"
    assert not list((tmp_path / ".ray").glob("s2r-*.token"))  # the job's token is removed
    # the trials logged to the script's MLflow server, whose store is in the study folder
    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s2r-ray")
    trials = client.search_runs([exp.experiment_id], "tags.`s2r.kind` = 'trial'")
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    stored = {p.name for p in (out / "mlflow" / "artifacts").rglob("*") if p.is_file()}
    assert {"report.json", "scaling.png"} <= stored
