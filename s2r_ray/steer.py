"""A study that steers itself, between its config and the policy (`s2r_ray.scaling.steering`):
what a `steer:` block asks for, the next decision from the ledger, the cells a decision adds,
and the report's `steering` section.

A steered study runs in rounds: the opening grid (`sizes` x `repetitions`, and the baseline),
then, each time every planned cell has finished, one decision (measure n with k more
repetitions, or stop). Deciding only when nothing is in flight makes each decision a function
of the finished cells alone, so a resumed study takes the decisions an uninterrupted one would
have (the measured seconds aside), and a decision, once in the study folder, is never taken
again. Pure: no Ray, no MLflow; the reducer calls it live, `s2r report` and `s2r status` from
the folder.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pandas as pd

from s2r_ray.config import StudyConfig
from s2r_ray.protocol import Cell, cell_grid
from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.posterior import posterior
from s2r_ray.scaling.powerlaw import Params
from s2r_ray.scaling.pricing import database_value, price_target
from s2r_ray.scaling.steering import (
    Goal,
    Plan,
    candidate_sizes,
    goal_interval,
    measured_groups,
    propose,
)

# Before any cell has finished: a guess that the first finished cells replace (cost.fit keeps
# only its exponent, and only while fewer than 3 sizes are measured).
PRIOR_COST = CostModel(30.0, 0.01, 1.0)
CI = 0.9


def goal_of(cfg: StudyConfig, pool_rows: int) -> Goal:
    """The goal a `steer:` block names; mae_at's n defaults to factor x the source pool."""
    steer = cfg.steer
    assert steer is not None
    if steer.goal == "mae_at":
        return Goal("mae_at", n=float(steer.n or steer.factor * pool_rows))
    if steer.goal == "n_for_target":
        return Goal("n_for_target", target_mae=cfg.target_mae)
    return Goal("gap")


def plan_of(cfg: StudyConfig, pool_rows: int) -> Plan:
    steer = cfg.steer
    assert steer is not None
    return Plan(
        precision=steer.precision,
        candidates=candidate_sizes(min(cfg.sizes), pool_rows, steer.per_decade),
        grid=tuple(cfg.sizes),
        grid_repetitions=steer.fallback_repetitions,
        opening_repetitions=cfg.repetitions,
        top_repetitions=steer.top_repetitions,
        gamma=steer.gamma,
        min_sizes=steer.min_sizes,
        new_size_repetitions=steer.new_size_repetitions,
        max_repetitions=steer.max_repetitions,
        blocks=tuple(steer.blocks),
        ci=CI,
        seed=cfg.seed,
    )


def decision_cells(cfg: StudyConfig, record: dict) -> list[Cell]:
    """The cells a 'measure' decision adds: its repetitions at n, at every target size m."""
    if record["action"] != "measure":
        return []
    m_grid: list[int | None] = list(cfg.target_sizes) if cfg.target_sizes else [None]
    first = record["first_repetition"]
    reps = range(first, first + record["repetitions"])
    return [Cell(record["n"], r, m) for r in reps for m in m_grid]


def study_cells(cfg: StudyConfig, decisions: list[dict]) -> list[Cell]:
    """Every cell of the study so far: the grid (the opening, when steered) and each decision's."""
    return cell_grid(cfg) + [c for d in decisions for c in decision_cells(cfg, d)]


def stopped(decisions: list[dict]) -> bool:
    return bool(decisions) and decisions[-1]["action"] == "stop"


def unit_cells(records: list[dict], headline_m: float | None) -> pd.DataFrame:
    """One row per finished (n, repetition) at n > 0: the MAE at the headline m and the seconds
    the pair cost (its pretraining once, plus the trials and scoring of every m): what one
    steering decision buys. Columns n, repetition, mae, s (NaN without timing fields)."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("n")]
    rows = []
    pairs: dict[tuple[int, int], list[dict]] = {}
    for r in ok:
        pairs.setdefault((int(r["n"]), int(r["repetition"])), []).append(r)
    for (n, rep), group in pairs.items():
        top = [r for r in group if headline_m is None or r.get("m") == headline_m]
        if not top:
            continue
        work = [r.get("trial_seconds", np.nan) + r.get("score_seconds", np.nan) for r in group]
        seconds = sum(work) + max(r.get("pretrain_seconds", np.nan) for r in group)
        rows.append({"n": n, "repetition": rep, "mae": float(top[0]["mae"]), "s": seconds})
    types = {"n": int, "repetition": int, "mae": float, "s": float}
    return pd.DataFrame(rows, columns=list(types)).astype(types)


def headline_m(cfg: StudyConfig) -> int | None:
    return max(cfg.target_sizes) if cfg.target_sizes else None


def _budget(cfg: StudyConfig, cells: pd.DataFrame, planned: Counter[int]) -> dict:
    steer = cfg.steer
    assert steer is not None
    spent = float(np.nansum(cells["s"]))
    used = sum(k for n, k in planned.items() if n > 0)
    return {
        "seconds": steer.budget_seconds,
        "cells": steer.budget_cells,
        "spent_seconds": round(spent, 2),
        "cells_used": used,
        "seconds_left": None if steer.budget_seconds is None else steer.budget_seconds - spent,
        "cells_left": None if steer.budget_cells is None else steer.budget_cells - used,
    }


def planned_repetitions(cfg: StudyConfig, decisions: list[dict]) -> Counter[int]:
    """Repetitions planned at each n > 0 (finished, running or still to run)."""
    return Counter(c.n for c in study_cells(cfg, decisions) if c.n and c.m == headline_m(cfg))


def decide(cfg: StudyConfig, records: list[dict], decisions: list[dict], pool_rows: int) -> dict:
    """The next decision of a study whose planned cells have all finished, as the record the
    study folder keeps: the policy's Decision plus its index, the repetitions it adds
    (first_repetition), the cost model and the budget it was taken with."""
    cells = unit_cells(records, headline_m(cfg))
    cost = PRIOR_COST.fit(cells["n"], cells["s"])
    planned = planned_repetitions(cfg, decisions)
    budget = _budget(cfg, cells, planned)
    # a size whose repetitions are all used (failed cells included) cannot be measured again
    busy = frozenset(n for n, k in planned.items() if k >= cfg.repetitions_available)
    decision = propose(
        cells,
        goal_of(cfg, pool_rows),
        plan_of(cfg, pool_rows),
        cost,
        budget_seconds=budget["seconds_left"],
        budget_cells=budget["cells_left"],
        busy=busy,
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        used={n: k for n, k in planned.items() if n > 0},
    )
    record = {"index": len(decisions)} | decision.to_dict()
    record["first_repetition"] = planned.get(decision.n, 0) if decision.n else None
    return json_safe(
        record | {"pool_rows": pool_rows, "cost_model": cost.to_dict(), "budget": budget}
    )


def cost_points(cells: pd.DataFrame) -> list[dict]:
    """Measured seconds per (n, repetition), averaged per n: what the cost model is fitted to."""
    timed = cells[np.isfinite(cells["s"])]
    return [
        {"n": int(n), "seconds_mean": float(g["s"].mean()), "pairs": len(g)}
        for n, g in timed.groupby("n", sort=True)
    ]


def section(
    cfg: StudyConfig,
    records: list[dict],
    decisions: list[dict],
    pool_rows: int,
    baseline_curve: dict | None = None,
) -> dict:
    """report.json's `steering`: the goal and its interval now, every decision, why the study
    stopped, the cost model, and (with ≥ 3 sizes) the target's price and the database's value,
    in experimental rows too where the no-pretraining curve E0(m) is known (`baseline_curve`
    of report.json's equivalent_samples)."""
    steer = cfg.steer
    assert steer is not None
    goal = goal_of(cfg, pool_rows)
    cells = unit_cells(records, headline_m(cfg))
    cost = PRIOR_COST.fit(cells["n"], cells["s"])
    out: dict = {
        "goal": goal.label,
        "goal_kind": goal.kind,
        "goal_n": goal.n,
        "precision": steer.precision,
        "ci": CI,
        "pool_rows": pool_rows,
        "budget": _budget(cfg, cells, planned_repetitions(cfg, decisions)),
        "decisions": decisions,
        "stop_reason": decisions[-1]["stop_reason"] if stopped(decisions) else None,
        "cost_model": cost.to_dict() | {"points": cost_points(cells)},
        "goal_interval": None,
        "price": None,
        "database_value": None,
    }
    groups = measured_groups(cells)
    if groups.size_count >= 3:
        post = posterior(groups)
        out["goal_interval"] = goal_interval(post, goal, CI, cfg.seed).to_dict()
        m_eq = None
        if baseline_curve:
            e0 = Params(baseline_curve["D0"], baseline_curve["beta"], baseline_curve["C0"], 1.0)
            m_eq = e0.size_for
        out["database_value"] = database_value(post, pool_rows, CI, cfg.seed, m_eq)
        if cfg.target_mae is not None:
            out["price"] = price_target(
                post, cfg.target_mae, pool_rows, cost, steer.new_size_repetitions, CI, cfg.seed
            )
    return json_safe(out)
