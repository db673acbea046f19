"""A study that steers itself: the decisions as the study folder, report, page, terminal and
MLflow show them; a decision is durable and never taken twice, across kill -9 and restarts.
Real Ray, real MLflow (SQLite), real processes for the kill."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from browser import dump_dom
from faults import REPO, StudyProcess, kill_ray_processes, ledger_lines, wait_for, write_config
from mlflow.tracking import MlflowClient

from s2r_ray import steer
from s2r_ray.config import ConfigError, build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.render.text import summary_text
from s2r_ray.study.driver import run_study

STEERED = yaml.safe_load((REPO / "tests" / "steered_study.yaml").read_text())


def _cfg(**changes):
    return build_config({**STEERED, **changes})


def _resume(tmp, out, lines: list[str]) -> dict:
    """The study in `out` resumed in this process (the session's Ray), tracked in tmp/m.db."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'm.db'}")
        return run_study(StudyFolder(out).config(), out, echo=lines.append)


def _record(n, r, mae, m=None, **seconds):
    cell = f"n{n}-m{'all' if m is None else m}-r{r}"
    base = {"cell": cell, "n": n, "repetition": r, "m": m, "status": "ok", "mae": mae}
    return base | seconds


# -- pure: the config, the cells a decision adds, the budget -----------------------------------


def test_a_steer_block_is_checked_like_every_other_field(tmp_path):
    with pytest.raises(ConfigError, match=r"steer\.goal n_for_target needs target_mae"):
        _cfg(target_mae=None, steer={"goal": "n_for_target"})
    with pytest.raises(ConfigError, match=r"steer\.gamma"):
        _cfg(steer={"gamma": 2})
    with pytest.raises(ConfigError, match=r"repetitions exceeds steer\.max_repetitions"):
        _cfg(repetitions=5)
    with pytest.raises(ConfigError, match=r"blocks must be 1 to max_repetitions"):
        _cfg(steer={**STEERED["steer"], "blocks": [1, 8]})
    cfg = _cfg()
    assert cfg.repetitions_available == 4  # a steered study may add repetitions up to its cap
    assert steer.goal_of(cfg, 360).n == 3600  # mae_at: factor x the source pool


def test_a_pair_costs_its_pretraining_once_and_every_m_and_decisions_extend_repetitions(
    tmp_path,
):
    cfg = _cfg(target_sizes=[20, 50])
    records = [
        _record(40, 0, 1.3, 20, pretrain_seconds=5.0, trial_seconds=2.0, score_seconds=1.0),
        _record(40, 0, 1.1, 50, pretrain_seconds=5.0, trial_seconds=3.0, score_seconds=1.0),
    ]
    cells = steer.unit_cells(records, steer.headline_m(cfg))
    assert cells.to_dict("records") == [{"n": 40, "repetition": 0, "mae": 1.1, "s": 12.0}]
    decision = {"action": "measure", "n": 40, "repetitions": 2, "first_repetition": 2}
    added = steer.decision_cells(cfg, decision)
    assert [c.id for c in added] == ["n40-m20-r2", "n40-m50-r2", "n40-m20-r3", "n40-m50-r3"]
    assert steer.planned_repetitions(cfg, [decision]) == {40: 4, 150: 2}


def test_a_spent_cell_budget_stops_the_study_with_its_reason(tmp_path):
    cfg = _cfg(steer={**STEERED["steer"], "budget_cells": 4})
    records = [
        _record(n, r, 1.5 - 0.1 * k - 0.01 * r) for k, n in enumerate((40, 150)) for r in (0, 1)
    ]
    decision = steer.decide(cfg, records, [], pool_rows=360)
    assert decision["action"] == "stop" and decision["stop_reason"] == "budget"
    assert decision["index"] == 0 and decision["budget"]["cells_used"] == 4


# -- a steered study end to end, killed between two decisions -------------------------------


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    """`s2r run` of the steered study, kill -9 once two decisions are taken, the same command
    again to the end: the folder, the report, what each process printed, the decisions seen at
    the kill."""
    tmp = tmp_path_factory.mktemp("steered")
    config = write_config(tmp / "steered.yaml", STEERED)
    out, db, path = tmp / "out", tmp / "m.db", tmp / "out" / "steering.jsonl"
    procs = []
    try:
        killed = StudyProcess(config, out, db)
        procs.append(killed)
        wait_for(
            lambda: path.is_file() and len(path.read_text().splitlines()) >= 2,
            600,
            "two steering decisions",
            killed,
        )
        killed.kill_group()
        kill_ray_processes(killed.ray_tmp)
        at_kill = path.read_text().splitlines()
        resumed = StudyProcess(config, out, db)
        procs.append(resumed)
        code, stdout, stderr = resumed.wait(timeout=600, what=" resuming a steered study")
    finally:
        for p in procs:
            p.cleanup()
    assert code == 0, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return tmp, report, stdout, at_kill


@pytest.mark.ray
def test_the_reducer_chooses_sizes_until_the_budget_stops_it(steered):
    tmp, report, stdout, _ = steered
    folder = StudyFolder(tmp / "out")
    decisions = folder.decisions()
    assert [d["index"] for d in decisions] == list(range(len(decisions)))
    *measures, last = decisions
    assert last["action"] == "stop" and last["stop_reason"] in {"budget", "no_gain"}
    assert all(d["action"] == "measure" for d in measures)
    # the largest opening size gets its third repetition, then new sizes of 2 repetitions
    # each until 4 sizes are measured
    assert (measures[0]["n"], measures[0]["repetitions"]) == (150, 1)
    assert measures[0]["reason"].startswith("opening grid")
    new = [d for d in measures if d["new_size"]]
    assert len(new) >= 2 and all(d["repetitions"] == 2 for d in new)
    # every decided cell ran, and nothing else; the budget of 9 pairs holds
    cfg = folder.config()
    planned = {c.id for c in steer.study_cells(cfg, decisions)}
    ran = [r["cell"] for r in ledger_lines(tmp / "out")]
    assert sorted(ran) == sorted(planned) and len(ran) == len(set(ran))
    pairs = {(r["n"], r["repetition"]) for r in folder.ledger() if r["n"]}
    assert len(pairs) <= 9 and len({n for n, _ in pairs}) >= 4
    # each decision was taken on the cells finished before it, and says what it expects
    scored = [d for d in measures if d["after"] is not None]
    assert scored and all(d["before"] is not None for d in scored)
    for d in scored:
        assert d["before"]["lo"] <= d["before"]["point"] <= d["before"]["hi"]
        assert d["after"]["width"] <= d["before"]["width"]
    # the report and what a person reads
    st = report["steering"]
    assert st["decisions"] == json.loads(json.dumps(decisions))
    assert st["stop_reason"] == last["stop_reason"]
    iv = st["goal_interval"]
    pool = report["counts"]["source_pool_rows"]
    assert iv["lo"] <= iv["point"] <= iv["hi"] and st["goal"] == f"MAE at n={10 * pool:,}"
    assert st["cost_model"]["source"].startswith("fitted to")
    assert {p["n"] for p in st["cost_model"]["points"]} == {n for n, _ in pairs}
    assert st["price"]["target_mae"] == 1.0 and st["database_value"]["database_rows"] == pool
    last_line = f"steering #{last['index']} (MAE at n={10 * pool:,} now"
    assert any(line.startswith(last_line) for line in stdout.splitlines()), stdout[-2000:]
    text = summary_text(report)
    assert f"stop: {last['stop_reason']}" in text and "#0 measure n=150 r2 " in text
    page = (tmp / "out" / "report.html").read_text()
    assert "Steering: what the study chose to measure" in page
    assert all(d["reason"].split(":")[0] in page for d in decisions)


@pytest.mark.ray
def test_a_person_sees_every_decision_on_the_page(steered):
    tmp, report, _, _ = steered
    dom = dump_dom((tmp / "out" / "report.html").as_uri())
    section = dom[dom.index('id="steering"') :].split("</section>")[0]
    rows = re.findall(r"<tr><td class=\"?l\"?>(\d+)</td>", section)
    assert [int(k) for k in rows] == [d["index"] for d in report["steering"]["decisions"]]
    assert f"Stop: <b>{report['steering']['stop_reason']}</b>" in section


@pytest.mark.ray
def test_mlflow_holds_each_decision_and_a_run_for_each_new_size(steered):
    tmp, report, _, _ = steered
    client = MlflowClient(f"sqlite:///{tmp / 'm.db'}")
    study_run = client.get_run(report["mlflow"]["study_run_id"])
    decisions = StudyFolder(tmp / "out").decisions()
    assert study_run.data.tags["s2r.steering"].startswith(f"{len(decisions) - 1}: stop (")
    widths = client.get_metric_history(study_run.info.run_id, "steer_goal_width")
    assert sorted(m.step for m in widths) == [d["index"] for d in decisions if d["before"]]
    exp = study_run.info.experiment_id
    sizes = client.search_runs([exp], "tags.`s2r.kind` = 'size'")
    by_n = {int(r.data.tags["s2r.n"]): r for r in sizes}
    measured = {r["n"] for r in StudyFolder(tmp / "out").ledger()}
    assert set(by_n) == measured and all(r.info.status == "FINISHED" for r in sizes)
    new_n = decisions[0]["n"]
    trials = client.search_runs([exp], f"tags.`s2r.kind` = 'trial' and tags.`s2r.n` = '{new_n}'")
    assert trials and {t.data.tags["mlflow.parentRunId"] for t in trials} == {
        by_n[new_n].info.run_id
    }
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert "steering.jsonl" in artifacts


@pytest.mark.ray
def test_a_round_a_killed_attempt_finished_is_decided_at_restart(steered, ray_session, tmp_path):
    """The last attempt recorded every cell of decision 1 but died before deciding again."""
    src, _, _, _ = steered
    out = tmp_path / "out"
    shutil.copytree(src / "out", out)
    folder = StudyFolder(out)
    kept = folder.decisions()[:2]
    (out / "steering.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept))
    cfg = folder.config()
    planned = {c.id for c in steer.study_cells(cfg, kept)}
    cells = [r for r in ledger_lines(out) if r["cell"] in planned]
    (out / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cells))
    folder.update_state(status="interrupted")
    lines: list[str] = []
    report = _resume(tmp_path, out, lines)  # a new MLflow store: new runs, the same folder
    decisions = folder.decisions()
    assert decisions[:2] == kept and decisions[2]["index"] == 2
    assert any(line.startswith("steering #2") for line in lines[:5]), lines[:5]  # before Tune
    assert report["status"] == "complete" and report["steering"]["stop_reason"]


@pytest.mark.ray
def test_a_study_killed_between_two_decisions_resumes_with_the_same_decisions(steered):
    tmp, _, stdout, at_kill = steered
    assert json.loads(at_kill[-1])["action"] == "measure"  # killed before the stop
    after = (tmp / "out" / "steering.jsonl").read_text().splitlines()
    assert after[: len(at_kill)] == at_kill  # taken decisions are read back, never re-taken
    indices = [json.loads(line)["index"] for line in after]
    assert indices == list(range(len(after))) and len(after) > len(at_kill)
    assert "resuming: " in stdout
