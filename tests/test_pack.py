"""Packed trials (`tune.pack`): fine-tuning trials of a cell trained as one network in one Tune
trial, each still its own Optuna trial, MLflow run, curve and early stop; a member that
diverges leaves the others training; a study killed mid-pack reruns only the unfinished
members. Real local Ray, real SQLite MLflow, real `s2r run` processes for the kill."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from faults import (
    StudyProcess,
    kill_ray_processes,
    ledger_lines,
    runs,
    study_killing_trial_actors,
    wait_for,
)
from faults import write_config as write_yaml
from mlflow.tracking import MlflowClient
from ray.tune.schedulers.async_hyperband import _Bracket

from s2r_ray.config import StudyConfig, SyntheticData, build_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.folder import StudyFolder
from s2r_ray.models import make_family
from s2r_ray.models.base import Source
from s2r_ray.protocol import make_plan
from s2r_ray.study import tracking
from s2r_ray.study.driver import run_study
from s2r_ray.study.halving import Rungs
from s2r_ray.study.packed import run_pack
from s2r_ray.study.pretrained import FolderStore
from s2r_ray.study.units import Pack, Trial

# one cell and its baseline, 6 trials each in packs of 3: rungs at epochs 2 and 6
PACKED = {
    "name": "packed",
    "sizes": [60],
    "repetitions": 1,
    "data": {"synthetic": {"n_source": 400, "n_target": 150, "n_features": 6}},
    "model": {"hidden": [16]},
    "pretrain": {"patience": 2, "max_steps": 300},
    "finetune": {"epochs": [6, 12], "batch_size": [16, 32]},
    "tune": {"trials_per_cell": 6, "startup_trials": 6, "grace_period": 2, "pack": 3},
    "report": {"n_boot": 50},
}


def test_rungs_are_ashas_and_a_member_continues_as_it_would_arriving_last():
    rungs = Rungs.asha(max_t=61, grace_period=10, reduction_factor=3)
    ray_rungs = _Bracket(min_t=10, max_t=61, reduction_factor=3, s=0)._rungs
    assert rungs.milestones == tuple(sorted(m for m, _ in ray_rungs)) == (10, 30)
    rungs.values[10] = {0: 0.5, 1: 0.9}  # recorded by an earlier pack of the cell
    assert rungs.halve(10, {2: 0.6, 3: 0.4, 4: 1.0}) == {2, 4}
    # Ray's ASHA deciding for each, arriving last at the rung (it minimises -MAE)
    bracket = _Bracket(min_t=10, max_t=61, reduction_factor=3, s=0)
    arriving_last = {2: (0.6, [0.5, 0.9, 0.4, 1.0]), 3: (0.4, [0.5, 0.9, 0.6, 1.0])}
    for key, (mine, others) in arriving_last.items():
        stop = -mine < bracket.cutoff({f"o{i}": -v for i, v in enumerate(others)})
        assert stop == (key == 2)
    assert rungs.values[10] == {0: 0.5, 1: 0.9, 2: 0.6, 3: 0.4, 4: 1.0}
    assert rungs.halve(11, {5: 9.0}) == set()  # not a rung


def _trials(out: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """Every Optuna trial of the study's journal, by trial key (none before it exists)."""
    path = StudyFolder(out).journal_path()
    if not path.is_file():
        return {}
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return {
        f"{cell}-t{t.number:02d}": t
        for cell in optuna.get_all_study_names(journal)
        for t in optuna.load_study(study_name=cell, storage=journal).trials
    }


@pytest.fixture(scope="module")
def packed(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    uri = f"sqlite:///{tmp / 'm.db'}"
    cfg = build_config({**PACKED, "tracking": {"uri": uri}})
    report = run_study(cfg, tmp / "out", echo=lambda line: None)
    return cfg, tmp / "out", report, MlflowClient(uri)


def test_each_member_is_its_own_optuna_trial_and_mlflow_run_with_a_curve(packed):
    _, out, report, client = packed
    assert report["status"] == "complete"
    trials = _trials(out)
    trial_runs = runs(out.parent / "m.db", "trial")
    assert len(trial_runs) == len(trials) == 2 * 6
    for key, t in trials.items():
        assert t.state == optuna.trial.TrialState.COMPLETE
        (run,) = [r for r in trial_runs if r.data.params["trial_key"] == key]
        curve = client.get_metric_history(run.info.run_id, "val_mae")
        # the curve runs to the epoch the member stopped at, as told to Optuna
        assert [m.step for m in curve] == list(range(1, t.user_attrs["stop_epoch"] + 1))
        assert min(m.value for m in curve) == pytest.approx(t.value)
    for cell in ("n0-mall-r0", "n60-mall-r0"):
        assert sorted(k for k in trials if k.startswith(cell)) == [
            f"{cell}-t{i:02d}" for i in range(6)
        ]
        packs = {r.data.params["pack"] for r in trial_runs if r.data.tags["s2r.cell"] == cell}
        assert len(packs) == 2  # two packs of three, each of one batch size (one network)
        for pack in packs:
            mine = [r for r in trial_runs if r.data.params["pack"] == pack]
            assert len(mine) == 3 and len({r.data.params["batch_size"] for r in mine}) == 1
    for record in StudyFolder(out).ledger():
        assert record["status"] == "ok" and record["trials"] == 6
        assert record["trial_network_reused"]  # scoring took the member's kept network
        assert record["val_mae"] == pytest.approx(record["selection_val_mae"], rel=1e-9)


def test_members_stop_at_the_rungs_each_by_its_own_value(packed):
    _, out, _, client = packed
    trial_runs = runs(out.parent / "m.db", "trial")
    lengths = {
        r.data.params["trial_key"]: (
            r.info.status,
            len(client.get_metric_history(r.info.run_id, "val_mae")),
            int(r.data.params["epochs"]),
        )
        for r in trial_runs
    }
    stopped = [k for k, (status, n, epochs) in lengths.items() if status == "KILLED"]
    finished = [k for k, (status, n, epochs) in lengths.items() if status == "FINISHED"]
    assert stopped and finished, lengths
    assert all(lengths[k][1] in (2, 6) and lengths[k][1] < lengths[k][2] for k in stopped)
    assert all(lengths[k][1] == lengths[k][2] for k in finished)


def test_a_member_that_diverges_leaves_and_the_others_train_as_if_alone(tmp_path):
    """No Tune: `run_pack` called directly (its reports go nowhere), on a real SQLite store."""
    torch.set_num_threads(1)
    cfg = StudyConfig(name="t", sizes=[200], repetitions=1, model={"hidden": [16, 8]})
    plan = make_plan(cfg, make_synthetic(SyntheticData(n_source=400, n_target=300)))
    cell = next(c for c in plan.cells if c.is_baseline)
    family = make_family(cfg)
    hp = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 7, "batch_size": 32, "freeze": 0}
    trials = (
        Trial(cell, 0, 5, hp),
        Trial(cell, 1, 6, {**hp, "lr": 1e30}),
        Trial(cell, 2, 7, {**hp, "lr": 1e-3, "dropout": 0.1}),
    )
    ctx = tracking.start_study(f"sqlite:///{tmp_path / 'm.db'}", "s2r-ray", "t", {}, [200], {})
    store = FolderStore(str(tmp_path / "out"))
    run_pack(Pack(trials, {cell.id: Rungs((99,), 3)}), plan, family, ctx, "cpu", store)
    by_key = {r.data.params["trial_key"]: r for r in runs(tmp_path / "m.db", "trial")}
    assert by_key[trials[1].key].info.status == "FAILED"
    diverged = store.load_trial(trials[1].key)  # its end alone, for a pack run again
    assert not diverged.bests and "diverged" in diverged.end.error and diverged.end.value is None
    for t in (trials[0], trials[2]):
        run = by_key[t.key]
        assert run.info.status == "FINISHED"
        curve = [m.value for m in ctx.client.get_metric_history(run.info.run_id, "val_mae")]
        alone = family.finetune(*plan.target_split(cell), hp=t.hp, seed=t.seed)
        np.testing.assert_allclose(curve, alone.curve, rtol=1e-4)
        assert store.load_trial(t.key).reached == 7


def test_members_of_cells_that_share_n_and_m_each_train_on_their_own_cell(tmp_path):
    """A pack across two repetitions of one n (trial numbers alike): each member trains on its
    own cell's rows from its own cell's pretrained network, as it would alone, and halves
    against its own cell's rung values only. No Tune: `run_pack` called directly."""
    torch.set_num_threads(1)
    cfg = StudyConfig(name="t", sizes=[200], repetitions=2, model={"hidden": [16, 8]})
    plan = make_plan(cfg, make_synthetic(SyntheticData(n_source=600, n_target=300)))
    c0, c1 = sorted((c for c in plan.cells if c.n == 200), key=lambda c: c.repetition)
    family, store = make_family(cfg), FolderStore(str(tmp_path / "out"))
    for cell in (c0, c1):
        rep = plan.repetitions[cell.repetition]
        source = Source(*plan.source_split(cell), rep.seed, plan.dataset.target_X[rep.train])
        (pre,) = family.pretrain_members([source])
        store.save(cell.pretrain_id, pre)
    hp = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 7, "batch_size": 32, "freeze": 0}
    trials = (Trial(c0, 0, 5, hp), Trial(c1, 0, 6, hp), Trial(c0, 1, 7, {**hp, "lr": 1e-3}))
    rungs = {c0.id: Rungs((3,), 3, {3: {9: 0.0}}), c1.id: Rungs((3,), 3)}  # c0 has a 0.0 there
    ctx = tracking.start_study(f"sqlite:///{tmp_path / 'm.db'}", "s2r-ray", "t", {}, [200], {})
    run_pack(Pack(trials, rungs), plan, family, ctx, "cpu", store)
    by_key = {r.data.params["trial_key"]: r for r in runs(tmp_path / "m.db", "trial")}
    for t in trials:
        kept = store.load_trial(t.key)
        # c0's members lose to its recorded 0.0 at the rung; c1's member has no one to lose to
        stop = 3 if t.cell == c0 else 7
        assert kept.end.key == t.key and kept.end.stop_epoch == stop
        assert by_key[t.key].info.status == ("KILLED" if stop == 3 else "FINISHED")
        curve = [
            m.value for m in ctx.client.get_metric_history(by_key[t.key].info.run_id, "val_mae")
        ]
        state = store.load(t.cell.pretrain_id).state
        alone = family.finetune(*plan.target_split(t.cell), hp=t.hp, seed=t.seed, pretrained=state)
        np.testing.assert_allclose(curve, alone.curve[:stop], rtol=1e-4)


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_study_stopped_mid_pack_reruns_only_the_unfinished_members(ray_session, tmp_path, stop):
    """kill -9 of the study's process group, or SIGTERM to it (a clean stop: no run left
    RUNNING), once members of a pack (two trials of each of two repetitions) have stopped at a
    rung (and were told to Optuna) while others train on: the resumed study keeps the stopped
    members (one MLflow run, one complete Optuna trial each) and asks again for the
    interrupted ones only."""
    raw = {
        **PACKED,
        "sizes": [40],
        "repetitions": 2,
        "finetune": {"epochs": [300, 300], "batch_size": [16]},
        "tune": {"trials_per_cell": 2, "startup_trials": 2, "grace_period": 2, "pack": 4},
    }
    config, out, db = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "out", tmp_path / "m.db"
    complete, running = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
    procs: list[StudyProcess] = []
    try:
        killed = StudyProcess(config, out, db)
        procs.append(killed)

        def mid_pack() -> bool:
            states: dict[str, set] = {}
            for key, t in _trials(out).items():
                states.setdefault(key.rsplit("-t", 1)[0], set()).add(t.state)
            return any({complete, running} <= s for s in states.values())

        wait_for(mid_pack, 300, "members told while others train", killed)
        if stop == "SIGTERM":
            killed.proc.send_signal(signal.SIGTERM)
            code, _, stderr = killed.wait(timeout=300, what=" after SIGTERM")
            assert code == 128 + signal.SIGTERM, stderr[-3000:]
            assert not runs(db, "trial", "RUNNING")
        else:
            killed.kill_group()
            kill_ray_processes(killed.ray_tmp)
        before = _trials(out)
        assert not ledger_lines(out)
        resumed = StudyProcess(config, out, db)
        procs.append(resumed)
        code, _, stderr = resumed.wait(timeout=600, what=" resuming")
        assert code == 0, stderr[-3000:]
    finally:
        for p in procs:
            p.cleanup()
    done = [k for k, t in before.items() if t.state == complete]
    unfinished = [k for k, t in before.items() if t.state == running]
    # a run created in the instant of the kill, before its params were logged, names no trial
    after = _trials(out)
    keys = [r.data.params.get("trial_key") for r in runs(db, "trial")]
    assert all(keys.count(k) == 1 and after[k].state == complete for k in done), keys
    assert all(after[k].state == optuna.trial.TrialState.FAIL for k in unfinished)
    records = StudyFolder(out).ledger()
    assert len(records) == 4
    for record in records:
        assert record["status"] == "ok" and record["trials"] == 2, record
        mine = [t for k, t in after.items() if k.startswith(record["cell"] + "-t")]
        # failed without an error (interrupted, with those asked for a pack not yet started):
        # asked again, not counted
        interrupted = [t for t in mine if t.state == optuna.trial.TrialState.FAIL]
        assert not [t for t in interrupted if "error" in t.user_attrs]
        assert len(mine) == 2 + len(interrupted)


def test_a_pack_whose_process_dies_reruns_only_its_unfinished_members(ray_session, tmp_path):
    """kill -9 of the pack's actor process (a pack of two trials of each of two repetitions)
    once members of it have ended (their networks and ends kept, their MLflow runs ended)
    while others train on: Tune runs the pack again, which reports the kept ends at once and
    trains only the members that had not ended."""
    raw = {
        **PACKED,
        "sizes": [40],
        "repetitions": 2,
        # long enough that the members still training are caught by the kill, not done by it
        "finetune": {"epochs": [3000, 3000], "batch_size": [16]},
        "tune": {"trials_per_cell": 2, "startup_trials": 2, "grace_period": 2, "pack": 4},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"},
    }
    out, db = tmp_path / "out", tmp_path / "m.db"

    def mid_pack() -> list[str]:
        """The members that ended of a pack that has members still training."""
        by_pack: dict[str, list] = {}
        for r in runs(db, "trial"):
            if "pack" in r.data.params:  # else just created: its params are not logged yet
                by_pack.setdefault(r.data.params["pack"], []).append(r)
        for members in by_pack.values():
            ended = [r.data.params["trial_key"] for r in members if r.info.status != "RUNNING"]
            if ended and len(ended) < len(members):
                return ended
        return []

    report, kill = study_killing_trial_actors(build_config(raw), out, mid_pack)
    assert kill.pids, "the study ended before a pack had ended and running members"
    ended_at_kill = kill.what
    assert report["status"] == "complete"
    keys = [r.data.params["trial_key"] for r in runs(db, "trial")]
    assert all(keys.count(k) == 1 for k in ended_at_kill), (ended_at_kill, keys)
    assert len(keys) > 8  # the members that had not ended ran again, in new runs
    trials = _trials(out)
    assert len(trials) == 8 and all(
        t.state == optuna.trial.TrialState.COMPLETE for t in trials.values()
    )
    cells_of: dict[str, set] = {}
    for r in runs(db, "trial"):
        cells_of.setdefault(r.data.params["pack"], set()).add(r.data.tags["s2r.cell"])
    assert any(len(cells) == 2 for cells in cells_of.values()), cells_of  # across repetitions
    records = StudyFolder(out).ledger()
    assert len(records) == 4
    for record in records:
        assert record["status"] == "ok" and record["trials"] == 2, record


def test_pretrainings_of_one_n_train_as_one_each_its_own_run_and_network(ray_session, tmp_path):
    """`tune.pretrain_pack: 2` over 2 sizes x 3 repetitions: 4 units (2 + 1 per size), each
    pretraining still its own MLflow run (with its curve) and its own network on disk, every
    cell scored."""
    db, out = tmp_path / "m.db", tmp_path / "out"
    raw = {
        **PACKED,
        "sizes": [60, 120],
        "repetitions": 3,
        "finetune": {"epochs": [4, 6], "batch_size": [16]},
        "tune": {"trials_per_cell": 1, "startup_trials": 1, "pretrain_pack": 2},
        "tracking": {"uri": f"sqlite:///{db}"},
    }
    report = run_study(build_config(raw), out, echo=lambda line: None)
    assert report["status"] == "complete"
    pre = runs(db, "pretrain", "FINISHED")
    assert sorted(r.data.params["n"] + "-" + r.data.params["repetition"] for r in pre) == [
        f"{n}-{r}" for n in (120, 60) for r in range(3)
    ]
    assert sorted(int(r.data.params["pack_size"]) for r in pre) == [1, 1, 2, 2, 2, 2]
    client = MlflowClient(f"sqlite:///{db}")
    for r in pre:
        assert client.get_metric_history(r.info.run_id, "source_val_mae")
    assert StudyFolder(out).pretrained_keys() == {f"n{n}-r{r}" for n in (60, 120) for r in range(3)}
    records = StudyFolder(out).ledger()
    assert len(records) == 9 and all(r["status"] == "ok" for r in records)
    assert len({r["source_val_mae"] for r in records if r["n"]}) == 6  # six networks
