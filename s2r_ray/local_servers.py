"""Servers on this machine's loopback, each started as its own process group and stopped by it.

An `mlflow server` forks workers that outlive a SIGTERM to its parent alone, and Ray's head
starts a dozen processes, some in sessions of their own: each command started here carries a
mark in its environment that all its descendants inherit, so it is stopped completely, and
nothing else on the machine is touched. Used by the tests and the HTTP-logging benchmark.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
_MARK = "S2R_PROCESS_GROUP"


def free_port() -> int:
    """A TCP port free on the loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Group:
    """A started command: its process, and the mark every descendant inherits."""

    proc: subprocess.Popen
    mark: str

    def members(self) -> list[int]:
        """PIDs alive with this mark in their environment, whichever process group or session
        they moved to (Ray's processes start sessions of their own)."""
        needle = f"{_MARK}={self.mark}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # ended meanwhile, or not ours to read
                continue
        return pids


def start_group(args: list[str], log: Path, env: dict[str, str] | None = None) -> Group:
    """Start `args` as the leader of a new process group, marked, its output in `log`."""
    mark = uuid.uuid4().hex
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=(os.environ if env is None else env) | {_MARK: mark},
            start_new_session=True,
        )
    return Group(proc, mark)


def stop_group(group: Group, grace_s: float = 20.0, *, leader_first: bool = False) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, to the group and every marked process.

    `leader_first`: SIGTERM the leader alone before that, for leaders that stop their children
    in order (`ray start --block` does in seconds; signalled all at once, its processes hang).
    """
    steps = [(signal.SIGTERM, grace_s, True)] if leader_first else []
    steps += [(signal.SIGTERM, grace_s, False), (signal.SIGKILL, 5.0, False)]
    for sig, wait, leader_only in steps:
        if leader_only:
            with suppress(ProcessLookupError):
                group.proc.send_signal(sig)
        else:
            _signal(group, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(group):
            time.sleep(0.2)
        if not _alive(group):
            break
    group.proc.wait(timeout=5)


def _signal(group: Group, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(group.proc.pid, sig)
    for pid in group.members():
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(group: Group) -> bool:
    group.proc.poll()  # reap the leader, or it lingers as a zombie
    return group.proc.returncode is None or bool(group.members())


def wait_http(url: str, group: Group, timeout_s: float, log: Path, status: int = 200) -> None:
    """Poll `url` until it answers with `status`; fail with the log's tail if `group`'s leader
    exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if group.proc.poll() is not None:
            raise RuntimeError(
                f"{group.proc.args[:4]} exited ({group.proc.returncode}): {_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                answered = r.status
        except urllib.error.HTTPError as e:
            answered = e.code
        except OSError:
            answered = None
        if answered == status:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s:.0f} s: {_tail(log)}")


def _tail(log: Path, chars: int = 1500) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextmanager
def mlflow_server(folder: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """A tracking server on a free loopback port, SQLite store and artifacts under `folder`;
    yields its URI and stops its process group on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log, where = free_port(), folder / "server.log", folder.resolve()
    args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port)]
    # one worker: each imports mlflow, seconds of start-up for nothing gained here
    args += ["--workers", "1", "--backend-store-uri", f"sqlite:///{where / 'mlflow.db'}"]
    args += ["--artifacts-destination", str(where / "artifacts")]
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    group = start_group(args, log, env=env)
    try:
        uri = f"http://{LOOPBACK}:{port}"
        wait_http(f"{uri}/health", group, timeout_s, log)
        yield uri
    finally:
        stop_group(group)
