"""`s2r submit` and `s2r jobs`: a study as a Ray job, through Ray's Jobs SDK.

The job's driver is `s2r run` on the head node, started in a copy of the working directory
(less what .gitignore and `EXCLUDES` leave out) with the environment a study needs. From a
checkout the copy holds the code that runs; from an installed package it holds the user's
configs and the job's runtime env installs s2r-ray from a pip requirement (by default the
version installed here). The SDK talks to the head's dashboard, http://HEAD:8265. Every failure
to reach or use the cluster is a `JobsError` with one line saying what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ray._private import ray_constants
from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobSubmissionClient

import s2r_ray
from s2r_ray.config import UserError
from s2r_ray.starter import package_version

# Never shipped, .gitignore or not: environments, study folders, MLflow stores, feature caches.
EXCLUDES = [".git/", ".venv/", "runs/", "mlruns.db", "mlruns/", "mlartifacts/", ".s2r_cache/"]
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "S2R_DATA_DIR")
# No telemetry; no run URL printed (and fetched) by every trial that ends, over HTTP.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class JobsError(UserError):
    """The cluster cannot be reached or refused a request."""


@contextmanager
def _cluster_errors(address: str) -> Iterator[None]:
    """The SDK's exceptions as one line each; its INFO and WARNING lines about packaging and
    websockets (its loggers set their own levels) are left out of what the user reads."""
    previous = logging.root.manager.disable  # contexts nest: restore, never just re-enable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    except ConnectionError as e:  # also the SDK's own, raised when nothing answers
        raise JobsError(
            f"no Ray dashboard answers at {address}: is the head up, and is this its "
            "dashboard URL (http://HEAD:8265)?"
        ) from e
    except AuthenticationError as e:
        raise JobsError(
            f"the cluster at {address} needs its auth token (missing or wrong here): set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it"
        ) from e
    except UserError:
        raise  # already one line: from a nested call
    except (RuntimeError, ValueError) as e:  # a refused request (an unknown job id), a package
        raise JobsError(f"{address}: {' '.join(str(e).split())}") from e  # over the size limit
    finally:
        logging.disable(previous)


def connect(address: str | None) -> JobSubmissionClient:
    """A client for the cluster at --address, else $RAY_ADDRESS (the dashboard URL, not the GCS
    address `s2r run` takes); the SDK checks the dashboard answers before returning it."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        raise JobsError(
            "no cluster address: pass --address http://HEAD:8265 (the head's dashboard) "
            "or set RAY_ADDRESS to it"
        )
    with _cluster_errors(address):
        return JobSubmissionClient(address)


def shipped_path(config: str, workdir: Path) -> str:
    """The config's path inside the shipped copy of `workdir`; a config the job would not
    have (outside it, or in a folder never shipped) is an error here, not on the cluster."""
    path = Path(config).resolve()
    try:
        relative = path.relative_to(workdir.resolve()).as_posix()
    except ValueError:
        raise JobsError(
            f"{config}: outside the working directory {workdir}, which is what the job gets; "
            "run s2r submit from a folder that contains the config"
        ) from None
    if any(relative == e.rstrip("/") or relative.startswith(e) for e in EXCLUDES):
        raise JobsError(f"{config}: in a folder that is never shipped ({', '.join(EXCLUDES)})")
    return relative


def run_command(
    config: str, out: str | None, overrides: list[str], *, quick: bool, fresh: bool
) -> list[str]:
    """The `s2r run` words the job's driver executes."""
    words = ["s2r", "run", config, *(["--out", out] if out else [])]
    words += [w for text in overrides for w in ("--set", text)]
    return words + ["--quick"] * quick + ["--fresh"] * fresh


def ships_the_code(workdir: Path) -> bool:
    """Whether the s2r_ray running here lies inside `workdir` (a checkout): the job then runs
    the shipped copy of the code, and needs no package installed for it."""
    return Path(s2r_ray.__file__).resolve().parent.is_relative_to(workdir.resolve())


def requirement(given: str | None, workdir: Path) -> str | None:
    """What the job's runtime env pip-installs s2r-ray from: `given` (a requirement such as
    's2r-ray==0.1.0', a .whl inside `workdir`, or 'none' where the nodes have it already), by
    default nothing from a checkout and the version installed here otherwise."""
    if given is None:
        return None if ships_the_code(workdir) else f"s2r-ray=={package_version()}"
    if given.strip().lower() == "none":
        return None
    if not given.endswith(".whl"):
        return given
    try:  # a wheel travels in the shipped folder; pip reads it from the job's unpacked copy
        inside = Path(given).resolve().relative_to(workdir.resolve()).as_posix()
    except ValueError:
        raise JobsError(
            f"--requirement {given}: a wheel must be inside the folder that is shipped "
            f"({workdir}); copy it there"
        ) from None
    if not (workdir / inside).is_file():
        raise JobsError(f"--requirement {given}: no such wheel")
    return f"${{{ray_constants.RAY_RUNTIME_ENV_CREATE_WORKING_DIR_ENV_VAR}}}/{inside}"


def shipped_size(workdir: Path) -> tuple[int, int]:
    """Files and bytes of what the job gets, walked by Ray's own packaging code with the
    same excludes (ours, Ray's defaults, .gitignore unless Ray is told to ignore it)."""
    found = [0, 0]

    def count(path: Path) -> None:
        if path.is_file():
            found[0] += 1
            found[1] += path.stat().st_size

    excludes = ray_constants.get_runtime_env_default_excludes() + EXCLUDES
    gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    _dir_travel(workdir, [_get_excludes(workdir, excludes)], count, include_gitignore=gitignore)
    return found[0], found[1]


def shipping_line(workdir: Path, pip: str | None) -> str:
    """What `s2r submit` ships and installs, said before it does."""
    files, size = shipped_size(workdir)
    what = f"shipping {workdir} ({files} files, {size / 2**20:.1f} MiB)"
    if pip:
        return f"{what}; the job installs {pip} (--requirement to change)"
    if ships_the_code(workdir):
        return f"{what} with the s2r_ray code in it; the job installs nothing"
    return f"{what}; the job installs nothing: the cluster's nodes must have s2r-ray"


def runtime_env(workdir: Path, pip: str | None = None) -> dict:
    """The working directory to ship, s2r-ray to install (when `pip` names it) and the
    environment the driver and every worker need."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    shipped = {"working_dir": str(workdir), "excludes": EXCLUDES, "env_vars": env | QUIET_ENV}
    # no pip check: the nodes' own packages (ray's pins) are kept, not judged
    return shipped | ({"pip": {"packages": [pip], "pip_check": False}} if pip else {})


def submit(
    client: JobSubmissionClient, words: list[str], workdir: Path, study: str, pip: str | None = None
) -> str:
    """Submit `words` (an `s2r run` command) as a job that ships `workdir` (and installs `pip`);
    returns its id (readable in `s2r jobs list`, unique per submission)."""
    with _cluster_errors(client.get_address()):
        return client.submit_job(
            entrypoint=shlex.join(words),
            submission_id=f"s2r-{study}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
            runtime_env=runtime_env(workdir, pip),
            metadata={"s2r.study": study},
        )


def list_jobs(client: JobSubmissionClient) -> list[JobDetails]:
    with _cluster_errors(client.get_address()):
        return sorted(client.list_jobs(), key=lambda j: j.start_time or 0)


def info(client: JobSubmissionClient, job: str) -> JobDetails:
    with _cluster_errors(client.get_address()):
        return client.get_job_info(job)


def logs(client: JobSubmissionClient, job: str, follow: bool, write: Callable[[str], None]) -> None:
    """The job's output so far, or (follow) as it comes until the job ends."""
    with _cluster_errors(client.get_address()):
        if not follow:
            write(client.get_job_logs(job))
            return
        info(client, job)  # an unknown id fails here with the server's message, not mid-stream

        async def tail() -> None:
            async for chunk in client.tail_job_logs(job):
                write(chunk)

        asyncio.run(tail())


def stop(client: JobSubmissionClient, job: str) -> bool:
    """Whether a stop was requested (False: the job had already ended)."""
    with _cluster_errors(client.get_address()):
        return client.stop_job(job)


def describe(job: JobDetails) -> str:
    """One line of `s2r jobs list`."""
    started = "-"
    if job.start_time:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
    entry = job.entrypoint if len(job.entrypoint) <= 70 else job.entrypoint[:67] + "..."
    return f"{job.submission_id or job.job_id:<40} {job.status:<10} {started}  {entry}"


def placement_notes(out: str | None, tracking_uri: str | None) -> list[str]:
    """Where a job's results land when paths are relative: inside its temporary copy of the
    working directory on the head, which nothing keeps."""
    notes = []
    if not out or not Path(out).is_absolute():
        notes.append(
            "note: the study folder is relative, so it lands in the job's temporary working "
            "directory on the head; pass --out /absolute/path to keep it"
        )
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        notes.append(
            "note: MLflow logs to a SQLite file in the job's temporary working directory; set "
            "MLFLOW_TRACKING_URI to the cluster's MLflow server (http://HEAD:5000)"
        )
    return notes
