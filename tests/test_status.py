"""`s2r status`: a study folder written as a driver writes it, read back without Ray."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2r_ray.cli import main
from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.status import status_text

START = 1_000.0  # the current attempt's start; cells finish once a minute from then on


@pytest.fixture
def folder(tmp_path: Path) -> StudyFolder:
    """A running study, second attempt: 1 cell from the first, 5 (1 failed) from this one."""
    folder = StudyFolder(tmp_path / "study")
    folder.write_config(build_config({"name": "st", "sizes": [100, 300, 1000], "repetitions": 2}))
    folder.update_state(attempts=2, elapsed_seconds=100.0, attempt_started_at=START)
    done = [(0, 0, 500.0), (0, 1, 1060.0), (100, 0, 1120.0), (100, 1, 1180.0)]
    done += [(300, 0, 1240.0), (300, 1, 1300.0)]
    for n, r, at in done:
        failed = (n, r) == (100, 1)
        folder.append_cell(
            {"cell": f"n{n}-mall-r{r}", "n": n, "m": None, "repetition": r, "finished_at": at}
            | ({"status": "failed", "error": "all trials failed"} if failed else {"status": "ok"})
            | ({} if failed else {"mae": 0.5 - n / 1e4})
        )
    fit = {"D": 2.0, "D_ci90": [1.5, 2.5], "alpha": 0.3, "alpha_ci90": [0.2, 0.4]}
    fit |= {"C": 0.1, "C_ci90": [0.05, 0.15]}
    ext = [{"factor": 10, "n": 10000, "mae": 0.2, "mae_ci90": [0.19, 0.21]}]
    report = {"fit": fit, "extrapolation": ext, "diagnostics": []}
    (folder.path / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def driver(folder: StudyFolder) -> Iterator[None]:
    """The lock a live driver holds on its folder."""
    with open(folder.path / ".driver.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def test_a_running_study_shows_cells_per_size_time_rate_eta_and_fit(
    folder: StudyFolder, driver: None
) -> None:
    lines = status_text(folder, now=1300.0).splitlines()
    head = f"study st in {folder.path}: running, attempt 2; 6/8 cells finished, 1 failed"
    assert lines[0] == head
    rows = [line.split() for line in lines[2:6]]
    assert rows == [
        ["baseline", "2", "2", "0"],
        ["n=100", "2", "2", "1"],
        ["n=300", "2", "2", "0"],
        ["n=1000", "0", "2", "0"],
    ]
    # 100 s before + 300 s now; 5 cells in the 300 s of this attempt: 1 a minute, 2 to go
    assert lines[6] == "  time so far 6:40 (this attempt 5:00); 1 cells/min, ETA 2:00"
    assert lines[7] == (
        "  fit: E(n) = D·n^−α + C with D = 2, α = 0.3 [0.2, 0.4], "
        "C = 0.1 [0.05, 0.15] (90% intervals); at 10× the largest n (n = 10,000): "
        "MAE 0.2 [0.19, 0.21]"
    )


def test_without_a_recorded_start_the_attempt_starts_when_study_json_was_written(
    folder: StudyFolder, driver: None
) -> None:
    state = folder.state()
    del state["attempt_started_at"]
    (folder.path / "study.json").write_text(json.dumps(state))
    os.utime(folder.path / "study.json", (START, START))
    assert "time so far 6:40 (this attempt 5:00)" in status_text(folder, now=1300.0)


def test_a_killed_driver_and_a_finished_study_say_so(folder: StudyFolder) -> None:
    text = status_text(folder, now=1300.0)  # status running, but no process holds the lock
    assert "no s2r process holds this folder" in text and "ETA" not in text
    folder.update_state(status="complete", elapsed_seconds=3725.5)
    text = status_text(folder)
    assert "st in" in text and ": complete, attempt 2;" in text
    assert "time 1:02:06 over 2 attempt(s)" in text and "ETA" not in text


def test_the_command(folder: StudyFolder, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder.update_state(status="interrupted")
    assert main(["status", str(folder.path)]) == 0
    out = capsys.readouterr().out
    assert "6/8 cells finished, 1 failed" in out and "resumes it" in out
    assert main(["status", str(tmp_path / "elsewhere")]) == 2
    assert "not a study folder" in capsys.readouterr().err
