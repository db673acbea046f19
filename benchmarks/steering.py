"""Steered versus fixed-grid scaling studies: compute to reach the same interval, and coverage.

    python benchmarks/steering.py [--laws 300] [--seed 0] [--gamma 0.5]
    python benchmarks/steering.py --replay DIR [--target-mae 0.35]

Synthetic mode (no training): each law E(n) = D·n^-α + C (α 0.05-1, C from 0 to half the MAE
at the smallest size) gives cells with noise larger at small n (a share of it an offset shared
by all sizes of a repetition) and seconds per cell growing with n. The fixed design is 7 log
sizes from 100 to 72,000 rows x 5 repetitions. For each law and goal (the MAE at 100x the
largest size; the n for a target MAE the law reaches at 1x-10x the largest size), the steered study
opens on a small grid and then follows steering.propose until its 90% interval is as narrow as
the grid's for that law, or it has spent the grid's compute. Reported: savings of compute
(quantiles), the laws where steering loses, and how often each design's interval covers truth.

Replay mode: a finished study folder's ledger is the pool of cells the steered study may buy
(in ledger order per size); the full grid is all of them. It reports at what fraction of the
grid's compute the steered study matches the full grid's interval width on each goal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.posterior import posterior
from s2r_ray.scaling.steering import (
    Goal,
    Interval,
    Plan,
    candidate_sizes,
    goal_interval,
    measured_groups,
    propose,
)

N_MIN, POOL = 100, 72_000
GRID = tuple(round(float(v)) for v in np.geomspace(N_MIN, POOL, 7))
GRID_REPS = 5
OPENING = (100, 1000, 10_000)
PRIOR_COST = CostModel(60.0, 0.01, 1.0)  # a deliberately wrong guess, refitted as cells finish


@dataclass(frozen=True)
class Law:
    """A known law, its noise and its cost; cells are drawn from it."""

    D: float
    alpha: float
    C: float
    sd: float
    shared: float
    offsets: np.ndarray  # per-repetition offsets, shared by all sizes
    seed: int

    def mae(self, n: float) -> float:
        return self.D * n**-self.alpha + self.C

    def cells(self, rng: np.random.Generator, n: int, reps: range) -> list[dict]:
        """Cells at n: noise ∝ the MAE, x(1 + sqrt(100/n))/2, so larger at small n."""
        scale = self.sd * self.mae(n) * (1 + np.sqrt(N_MIN / n)) / 2
        out = []
        for r in reps:
            noise = np.sqrt(self.shared) * self.offsets[r] + np.sqrt(1 - self.shared) * rng.normal()
            seconds = (30 + 0.01 * n) * rng.lognormal(0, 0.1)
            out.append({"n": n, "repetition": r, "mae": self.mae(n) + scale * noise, "s": seconds})
        return out


def draw_law(seed: int) -> Law:
    rng = np.random.default_rng(seed)
    alpha, e0 = rng.uniform(0.05, 1.0), rng.uniform(0.3, 1.2)
    c = rng.uniform(0, 0.5) * e0
    return Law(
        D=(e0 - c) * N_MIN**alpha,
        alpha=alpha,
        C=c,
        sd=rng.uniform(0.02, 0.06),
        shared=rng.uniform(0, 0.5),
        offsets=rng.normal(size=100),
        seed=seed,
    )


def goals_for(law: Law, rng: np.random.Generator) -> dict[str, tuple[Goal, float]]:
    """Each goal with its true value."""
    n_t = POOL * 10 ** rng.uniform(0, 1)
    return {
        "mae_at_100x": (Goal("mae_at", n=100.0 * POOL), law.mae(100.0 * POOL)),
        "n_for_target": (Goal("n_for_target", target_mae=law.mae(n_t)), n_t),
    }


def covers(iv: Interval, truth: float) -> bool:
    return iv.lo <= truth <= iv.hi


Buy = Callable[[int, range], list[dict]]  # (n, repetitions) -> cells: a law's or a ledger's


def steer(goal: Goal, plan: Plan, buy: Buy, budget: float, busy_of=None) -> dict:
    """Run one steered study to its stop; the decisions, cost spent and final interval."""
    bought: list[dict] = []
    cost, spent, decisions = PRIOR_COST, 0.0, []
    while True:
        table = pd.DataFrame(bought, columns=["n", "repetition", "mae", "s"])
        busy = busy_of(table) if busy_of else frozenset()
        d = propose(table, goal, plan, cost, budget_seconds=budget - spent, busy=busy)
        decisions.append(d)
        if d.action == "stop":
            break
        first = int((table["n"] == d.n).sum())
        new = buy(d.n, range(first, first + d.repetitions))
        if not new:
            raise RuntimeError(f"n={d.n} proposed but the pool has no cell left there")
        bought += new
        spent += sum(c["s"] for c in new)
        table = pd.DataFrame(bought)
        cost = PRIOR_COST.fit(table["n"], table["s"])
    final = d.before
    if final is None:  # stopped before 3 sizes: no interval
        final = Interval(np.nan, -np.inf, np.inf, goal.log_scale)
    return {"spent": spent, "interval": final, "decisions": decisions, "cells": len(bought)}


def synthetic(laws: int, seed: int, gamma: float) -> dict[str, pd.DataFrame]:
    """Per goal, one row per law: grid cost and width, steered cost and width, coverage."""
    rows: dict[str, list[dict]] = {}
    for i in range(laws):
        law = draw_law(seed * 100_000 + i)
        rng = np.random.default_rng([seed, i, 1])
        grid_cells = [c for n in GRID for c in law.cells(rng, n, range(GRID_REPS))]
        grid_cost = sum(c["s"] for c in grid_cells)
        post = posterior(measured_groups(pd.DataFrame(grid_cells)))
        for name, (goal, truth) in goals_for(law, rng).items():
            g = goal_interval(post, goal)
            plan = Plan(
                precision=g.width,
                candidates=candidate_sizes(N_MIN, POOL),
                grid=OPENING,
                grid_repetitions=GRID_REPS,
                gamma=gamma,
                seed=i,
            )
            crng = np.random.default_rng([seed, i, 2])
            s = steer(goal, plan, partial(law.cells, crng), grid_cost)
            last = s["decisions"][-1]
            rows.setdefault(name, []).append(
                {
                    "law": i,
                    "alpha": law.alpha,
                    "C_share": law.C / law.mae(N_MIN),
                    "grid_cost": grid_cost,
                    "grid_width": g.width,
                    "grid_covers": covers(g, truth),
                    "steer_cost": s["spent"],
                    "steer_width": s["interval"].width,
                    "steer_covers": covers(s["interval"], truth),
                    "reached": np.isfinite(g.width) and s["interval"].width <= g.width,
                    "stop": last.stop_reason,
                    "fallback": any(d.fallback for d in s["decisions"]),
                    "sizes": last.sizes_measured,
                    "cells": s["cells"],
                }
            )
    return {k: pd.DataFrame(v) for k, v in rows.items()}


def summarise(name: str, df: pd.DataFrame) -> str:
    """Markdown lines for one goal."""
    saving = np.where(df["reached"], 1 - df["steer_cost"] / df["grid_cost"], np.nan)
    q = np.nanquantile(saving, [0.1, 0.25, 0.5, 0.75, 0.9]) if np.isfinite(saving).any() else []
    lost = df[~df["reached"] | (saving <= 0)]
    se = np.sqrt(0.9 * 0.1 / len(df))
    out = [
        f"### {name} ({len(df)} laws)",
        "",
        f"- reached the grid's width within the grid's compute: {df['reached'].mean():.1%}",
        "- compute saved where reached, quantiles 10/25/50/75/90%: "
        + " / ".join(f"{v:.0%}" for v in q),
        "- compute saved, all laws (negative: more than the grid), quantiles 10/25/50/75/90%: "
        + " / ".join(
            f"{v:.0%}"
            for v in np.quantile(
                1 - df["steer_cost"] / df["grid_cost"], [0.1, 0.25, 0.5, 0.75, 0.9]
            )
        ),
        f"- median relative compute (steered / grid, all laws): "
        f"{np.median(df['steer_cost'] / df['grid_cost']):.2f}",
        f"- median 90% width: grid {df['grid_width'].median():.3g}, steered "
        f"{df['steer_width'].median():.3g}",
        f"- coverage of the truth by the 90% interval (s.e. ±{se:.3f}): grid "
        f"{df['grid_covers'].mean():.1%}, steered {df['steer_covers'].mean():.1%}",
        f"- stop reasons: {df['stop'].value_counts().to_dict()}; fell back to the grid: "
        f"{int(df['fallback'].sum())}; median sizes measured {df['sizes'].median():g}, "
        f"median cells {df['cells'].median():g} (grid: {len(GRID) * GRID_REPS})",
        f"- laws where steering loses (not reached or no saving): {len(lost)}"
        + (
            f"; their median α {lost['alpha'].median():.2f} (all: {df['alpha'].median():.2f}), "
            f"median C share {lost['C_share'].median():.2f} (all: {df['C_share'].median():.2f})"
            if len(lost)
            else ""
        ),
        "",
    ]
    return "\n".join(out)


def ledger_cells(folder: str) -> pd.DataFrame:
    """(n, repetition, mae, s) per finished (n, repetition) at the headline m, ledger order.

    A (n, repetition) pretrains once and tunes every m: its seconds are the pretraining plus
    all its trials and scoring. Without timing fields the prior cost stands in (said so).
    """
    from s2r_ray.folder import StudyFolder

    recs = [r for r in StudyFolder(folder).ledger() if r.get("status") == "ok" and r.get("n")]
    df = pd.DataFrame(recs)
    for col in ("m", "trial_seconds", "pretrain_seconds", "score_seconds"):
        if col not in df:
            df[col] = np.nan
    timed = df[["trial_seconds", "pretrain_seconds", "score_seconds"]].notna().any().any()
    work = df["trial_seconds"].fillna(0) + df["score_seconds"].fillna(0)
    df = df.assign(work=work)
    headline = df["m"].max() if df["m"].notna().any() else None
    rows = []
    for (n, r), g in df.groupby(["n", "repetition"], sort=False):
        top = g if headline is None else g[g["m"] == headline]
        if top.empty:
            continue
        s = g["work"].sum() + g["pretrain_seconds"].fillna(0).max()
        rows.append({"n": int(n), "repetition": int(r), "mae": float(top["mae"].iloc[0]), "s": s})
    out = pd.DataFrame(rows)
    if not timed:
        print("ledger has no timing fields: seconds per cell from the prior a + b·n")
        out["s"] = PRIOR_COST(out["n"])
    return out


def replay(folder: str, target_mae: float | None, gamma: float) -> str:
    pool = ledger_cells(folder)
    sizes = sorted(pool["n"].unique())
    if len(sizes) < 4:
        raise SystemExit(f"{folder}: {len(sizes)} source sizes; replay needs at least 4")
    full = posterior(measured_groups(pool))
    largest = float(max(sizes))
    if target_mae is None:
        target_mae = float(np.median(full.predict(10 * largest)))
    goals = {
        "mae_at_100x": Goal("mae_at", n=100 * largest),
        "n_for_target": Goal("n_for_target", target_mae=target_mae),
        "gap": Goal("gap"),
    }
    by_size = {n: g.to_dict("records") for n, g in pool.groupby("n", sort=False)}
    total = float(pool["s"].sum())
    picks = np.unique(np.linspace(0, len(sizes) - 1, 3).round().astype(int))
    opening = tuple(int(sizes[k]) for k in picks)

    def draw(n: int, reps: range) -> list[dict]:
        return by_size[n][reps.start : reps.stop]

    def exhausted(table: pd.DataFrame) -> frozenset[int]:
        have = table["n"].value_counts()
        return frozenset(n for n in sizes if have.get(n, 0) >= len(by_size[n]))

    lines = [
        f"replay of {folder}: {len(pool)} cells over {len(sizes)} sizes, {total:.0f} s; "
        f"target MAE {target_mae:.4g}; opening {list(opening)}",
        "",
        "| goal | full-grid 90% interval | width | steered interval | width | compute used | "
        "stop |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, goal in goals.items():
        g = goal_interval(full, goal)
        plan = Plan(
            precision=g.width,
            candidates=tuple(int(n) for n in sizes),
            grid=opening,
            grid_repetitions=max(len(v) for v in by_size.values()),
            gamma=gamma,
            max_repetitions=max(len(v) for v in by_size.values()),
        )
        s = steer(goal, plan, draw, total, busy_of=exhausted)
        iv = s["interval"]
        lines.append(
            f"| {name} | [{g.lo:.4g}, {g.hi:.4g}] | {g.width:.3g} | [{iv.lo:.4g}, {iv.hi:.4g}] | "
            f"{iv.width:.3g} | {s['spent'] / total:.0%} | {s['decisions'][-1].stop_reason} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--laws", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--replay", metavar="DIR")
    ap.add_argument("--target-mae", type=float)
    args = ap.parse_args()
    if args.replay:
        print(replay(args.replay, args.target_mae, args.gamma))
        return
    t0 = time.perf_counter()
    results = synthetic(args.laws, args.seed, args.gamma)
    print(
        f"steered vs grid {len(GRID)} sizes x {GRID_REPS} repetitions, {args.laws} laws, "
        f"gamma {args.gamma}, opening {list(OPENING)} x2, {time.perf_counter() - t0:.0f} s\n"
    )
    for name, df in results.items():
        print(summarise(name, df))


if __name__ == "__main__":
    main()
