"""A trial's curve against a real SQLite MLflow store: sent every few seconds, not every epoch,
each point stamped when its epoch ended, and whole when the run ends, however it ends."""

from __future__ import annotations

import time

import pytest

from s2r_ray.protocol import Cell
from s2r_ray.study import tracking


def test_a_curve_is_sent_every_few_seconds_and_whole_when_its_run_ends(tmp_path):
    ctx = tracking.start_study(f"sqlite:///{tmp_path}/m.db", "e", "s", {}, [100], {})
    client = ctx.client

    def steps(run_id: str) -> list[int]:
        return [m.step for m in client.get_metric_history(run_id, "val_mae")]

    with (
        pytest.raises(SystemExit),
        tracking.nested_run(ctx, Cell(100, 0), "trial", "t00", {"lr": 0.1}) as run,
    ):
        run.every_s = 3600.0
        for epoch in (1, 2, 3):
            run.add({"val_mae": 1 / epoch, "best_val_mae": float("nan")}, step=epoch)
        ended_by = time.time() * 1000
        assert steps(run.run_id) == []  # the interval has not passed: nothing sent yet
        time.sleep(0.05)
        run.every_s = 0.0  # it has now
        run.add({"val_mae": 0.2}, step=4)
        assert steps(run.run_id) == [1, 2, 3, 4]
        run.every_s = 3600.0
        run.add({"val_mae": 0.1}, step=5)
        raise SystemExit  # how ASHA stops a trial, inside tune.report

    history = client.get_metric_history(run.run_id, "val_mae")
    assert [(m.step, m.value) for m in history] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1 / 3),
        (4, 0.2),
        (5, 0.1),
    ]
    assert all(m.timestamp <= ended_by for m in history[:3])  # stamped at its epoch, not sent
    assert client.get_metric_history(run.run_id, "best_val_mae") == []  # NaN is never sent
    assert client.get_run(run.run_id).info.status == "KILLED"


def test_runs_left_running_end_as_the_work_the_study_folder_holds(tmp_path):
    """A process killed between keeping its work (a trial told to the journal, a pretraining's
    network on disk) and ending its run leaves the run RUNNING: it ends as that work ended, not
    KILLED. A key's lost attempt whose retry ended, an older lost attempt, and work the folder
    does not hold end KILLED."""
    ctx = tracking.start_study(f"sqlite:///{tmp_path}/m.db", "e", "s", {}, [100], {})
    cell = Cell(100, 0)

    def run(kind: str, key: str) -> str:
        time.sleep(0.002)  # the newest of a key's runs by start time
        return tracking.open_run(ctx, cell, kind, key, {}).run_id

    told, stopped = run("trial", "n100-mall-r0-t00"), run("trial", "n100-mall-r0-t01")
    lost = run("trial", "n100-mall-r0-t02")
    tracking.end(ctx, run("trial", "n100-mall-r0-t02"), "FINISHED")  # its retry
    interrupted = run("trial", "n100-mall-r0-t03")
    older, newer = run("pretrain", "n100-r0"), run("pretrain", "n100-r0")
    ends = {
        "n100-mall-r0-t00": "FINISHED",
        "n100-mall-r0-t01": "KILLED",  # stopped at a rung
        "n100-mall-r0-t02": "FINISHED",
        "n100-r0": "FINISHED",
    }
    assert tracking.end_orphans(ctx, lambda: ends) == 6
    status = {r: ctx.client.get_run(r).info.status for r in (told, stopped, lost, interrupted)}
    assert status == {told: "FINISHED", stopped: "KILLED", lost: "KILLED", interrupted: "KILLED"}
    assert ctx.client.get_run(newer).info.status == "FINISHED"
    assert ctx.client.get_run(older).info.status == "KILLED"

    def unread() -> dict[str, str]:
        raise AssertionError("the folder's work is read only when a run was left open")

    assert tracking.end_orphans(ctx, unread) == 0
