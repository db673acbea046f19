"""What the fault tests share: a study run as a real `s2r run` process with its own Ray, and
the clean-up of exactly the Ray processes that such a run started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class StudyProcess:
    """`s2r run CONFIG --out OUT` in its own process group, with a private Ray temp dir so that
    every Ray process it starts can be found (and killed) by that dir alone."""

    def __init__(
        self,
        config: Path,
        out: Path,
        db: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        ray_tmp: str | None = None,
    ):
        # short: Unix socket paths
        self.ray_tmp = ray_tmp or tempfile.mkdtemp(prefix="s2r", dir="/tmp")
        env = (os.environ if env is None else env) | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
            "RAY_TMPDIR": self.ray_tmp,
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "s2r_ray.cli", "run", str(config), "--out", str(out), *extra]
        self.started = time.time()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, timeout: float, what: str = "") -> tuple[int, str, str]:
        """(exit code, stdout, stderr); an AssertionError naming the hang (`what`: the step,
        such as ' after SIGTERM') if it has not exited within `timeout` s, after killing it."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            out, err = self.output()
            raise AssertionError(
                f"the study did not exit within {timeout:g} s{what}: it hangs\n"
                f"stdout: ...{out[-2000:]}\nstderr: ...{err[-3000:]}"
            ) from None
        return self.proc.returncode, out, err

    def output(self) -> tuple[str, str]:
        """What the process printed, once it has ended; '' if its pipes stay open (a process
        it started may hold them) for 30 s."""
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            return "", "(the pipes stayed open after the study exited)"
        return out or "", err or ""

    def kill_group(self) -> None:
        """kill -9 of the driver's whole process group, as a lost job allocation would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def cleanup(self) -> None:
        """Kill what is left of this run's Ray (after a kill -9 its agents can linger)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        kill_ray_processes(self.ray_tmp)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _read(pid: int, what: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def kill_ray_processes(ray_tmp: str) -> int:
    """Kill every process whose environment names this Ray temp dir: ours and no one else's."""
    mark = f"RAY_TMPDIR={ray_tmp}".encode()
    victims = [pid for pid in _pids() if mark in _read(pid, "environ").split(b"\0")]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(victims)


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`."""
    parent = {}
    for pid in _pids():
        stat = _read(pid, "stat").decode(errors="replace")
        if stat:
            parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, ppid in parent.items() if ppid in frontier}
        found += [(pid, _read(pid, "cmdline").replace(b"\0", b" ").decode()) for pid in children]
        frontier = children
    return found


@dataclass
class Kill:
    """What `study_killing_trial_actors` killed: the processes, seconds after the study's
    start, and the condition's value that triggered it."""

    pids: list[int] = field(default_factory=list)
    at: float | None = None
    what: object = None


def study_killing_trial_actors(cfg, out: Path, when: Callable[[], object]) -> tuple[dict, Kill]:
    """Run the study in this process (on the session's Ray) and kill -9 its trial actors'
    processes once `when()` is truthy, polled until some were killed or the study ended, not
    for a fixed time. Every Tune actor goes, busy (Ray titles it `ImplicitFunc.train`) or
    between two calls (`ImplicitFunc`: a pack reporting each round spends much of its time
    there, and a kill of the busy ones alone missed it in 1 of 4 runs)."""
    from s2r_ray.study.driver import run_study

    kill, errors, ended, started = Kill(), [], threading.Event(), time.time()

    def killer() -> None:
        try:
            while not kill.pids and not ended.is_set():
                if what := when():
                    for pid, cmd in descendants(os.getpid()):
                        if cmd.startswith("ray::ImplicitFunc"):
                            os.kill(pid, signal.SIGKILL)
                            kill.pids.append(pid)
                    kill.at, kill.what = time.time() - started, what
                time.sleep(0.2)
        except Exception as error:  # reported by the test, not lost with the thread
            errors.append(error)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        report = run_study(cfg, out, echo=lambda line: None)
    finally:
        ended.set()
        thread.join(timeout=60)
    assert not errors, errors
    return report, kill


def wait_for(predicate, timeout: float, what: str, proc: StudyProcess | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"the study exited before {what}: {proc.output()}")
        if time.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.2)


def call_within(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a daemon thread: its result, or its exception re-raised here; an AssertionError
    naming `what` if it has neither returned nor raised within `timeout` s (a hang)."""
    done: dict = {}

    def target() -> None:
        try:
            done["result"] = fn()
        except BaseException as error:  # re-raised in the caller's thread
            done["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout:g} s: it hangs")
    if "error" in done:
        raise done["error"]
    return done["result"]


def ledger_lines(out: Path) -> list[dict]:
    """The raw ledger, duplicates included (StudyFolder.ledger() would hide them)."""
    path = out / "cells.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def runs(db: Path, kind: str, status: str | None = None) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("s2r-ray")
    if exp is None:  # the study has not reached MLflow yet
        return []
    query = f"tags.`s2r.kind` = '{kind}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], query, max_results=5000)


# A gRPC call to a GCS: the cluster's metadata, or how the call was refused.
GCS_PROBE = textwrap.dedent(
    """
    import json, sys
    from ray._raylet import GcsClient
    try:
        raw = GcsClient(address=sys.argv[1]).internal_kv_get(
            b"CLUSTER_METADATA", namespace=b"cluster", timeout=20
        )
        print(json.dumps({"metadata": json.loads(raw)}))
    except Exception as e:
        print(json.dumps({"refused": f"{type(e).__name__}: {e}"}))
    """
)


def gcs_probe(address: str, env: dict[str, str]) -> dict:
    """What a client with `env`'s auth settings gets from the GCS at `address`."""
    done = subprocess.run(
        [sys.executable, "-c", GCS_PROBE, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"refused": done.stderr[-500:]}


def reports_usage(metadata: dict) -> bool:
    """Whether a Ray cluster reports usage to Ray's servers: Ray writes its commit and OS into
    the cluster's metadata only when reporting is on."""
    return "git_commit" in metadata
