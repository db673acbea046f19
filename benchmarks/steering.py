"""Steered versus fixed-grid scaling studies: compute and interval width, and coverage.

    python benchmarks/steering.py [--laws 300] [--seed 0] [--gamma 0.5] [--jobs 2]
        [--modes match,f=0.5,f=0.7] [--top-repetitions 3] [--score width] [--blocks 1,2,4]
        [--csv rows.csv]
    python benchmarks/steering.py --from-csv rows.csv
    python benchmarks/steering.py --replay DIR [--target-mae 0.35]

Synthetic mode (no training): each law E(n) = D·n^-α + C (α 0.05-1, C from 0 to half the MAE
at the smallest size) gives cells with noise larger at small n (a share of it an offset shared
by all sizes of a repetition) and seconds per cell growing with n. The fixed design is 7 log
sizes from 100 to 72,000 rows x 5 repetitions. Goals: the MAE at 100x the largest size; the n
for a target MAE the law reaches at 1x-10x the largest size. For each law, goal and mode the
steered study opens on a small grid and then follows steering.propose:
- match: until its 90% interval is as narrow as the grid's for that law, or it has spent the
  grid's compute. Reported: savings of compute (quantiles), the laws where steering loses.
- f=x (budget-matched, issue #17's criterion on medians over laws): precision 0, so it stops
  only on a budget of x times that law's grid compute (or no gain). Reported: the median 90%
  width over laws, steered vs grid, the per-law width ratio's quantiles, the laws where the
  steered interval is wider.
Both report how often each design's interval covers the truth.

Replay mode: a finished study folder's ledger (StudyFolder.ledger, unit_cells at the config's
headline m) is the pool of cells the steered study may buy (in ledger order per size); the full
grid is all of them. It reports at what fraction of the grid's compute the steered study
matches the full grid's interval width on each goal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd
from scipy.stats import t as t_dist

from s2r_ray.folder import StudyFolder
from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.posterior import (
    Cells,
    Posterior,
    correlation,
    design_dof,
    laplace_covariance,
    posterior,
)
from s2r_ray.scaling.steering import (
    Goal,
    Interval,
    Plan,
    candidate_sizes,
    goal_interval,
    measured_groups,
    propose,
)
from s2r_ray.steer import headline_m, unit_cells

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


def run_law(
    i: int,
    seed: int,
    gamma: float,
    modes: tuple[str, ...],
    top: int | None,
    score: str,
    blocks: tuple[int, ...],
) -> list[dict]:
    """One law: its grid, then per goal and mode one steered study; one row per (goal, mode)."""
    law = draw_law(seed * 100_000 + i)
    rng = np.random.default_rng([seed, i, 1])
    grid_cells = [c for n in GRID for c in law.cells(rng, n, range(GRID_REPS))]
    grid_cost = sum(c["s"] for c in grid_cells)
    post = posterior(measured_groups(pd.DataFrame(grid_cells)))
    rows = []
    for name, (goal, truth) in goals_for(law, rng).items():
        g = goal_interval(post, goal)
        for mode in modes:
            # match: steer until the width is this law's grid width, on the grid's compute;
            # f=x: precision 0 (stop on budget or no gain), x times the grid's compute
            frac = 1.0 if mode == "match" else float(mode.split("=")[1])
            plan = Plan(
                precision=g.width if mode == "match" else 0.0,
                candidates=candidate_sizes(N_MIN, POOL),
                grid=OPENING,
                grid_repetitions=GRID_REPS,
                gamma=gamma,
                seed=i,
                top_repetitions=top,
                score=score,
                blocks=blocks,
            )
            crng = np.random.default_rng([seed, i, 2])  # the same seed for every mode
            s = steer(goal, plan, partial(law.cells, crng), frac * grid_cost)
            last = s["decisions"][-1]
            rows.append(
                {
                    "goal": name,
                    "mode": mode,
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
    return rows


def synthetic(
    laws: int,
    seed: int,
    gamma: float,
    modes: tuple[str, ...],
    top: int | None = 3,
    score: str = "width",
    jobs: int = 1,
    csv: str | None = None,
    first: int = 0,
    blocks: tuple[int, ...] = Plan.blocks,
) -> pd.DataFrame:
    """One row per law, goal and mode: grid cost and width, steered cost and width, coverage.

    csv: each law's rows are appended there as it finishes (laws in order), so a run cut short
    still leaves its first laws to summarise (--from-csv)."""
    work = partial(
        run_law, seed=seed, gamma=gamma, modes=modes, top=top, score=score, blocks=blocks
    )
    rows: list[dict] = []
    with multiprocessing.Pool(jobs) if jobs > 1 else _Serial() as pool:
        for part in pool.imap(work, range(first, laws)):
            rows += part
            if csv:
                pd.DataFrame(part).to_csv(csv, mode="a", header=len(rows) == len(part), index=False)
    return pd.DataFrame(rows)


class _Serial:
    """multiprocessing.Pool's imap in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def imap(func, items):
        return map(func, items)


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _q(values, fmt: str = "{:.0%}") -> str:
    return " / ".join(fmt.format(v) for v in np.nanquantile(values, QUANTILES, method="nearest"))


def _coverage(df: pd.DataFrame) -> str:
    se = np.sqrt(0.9 * 0.1 / len(df))
    return (
        f"grid {df['grid_covers'].mean():.1%}, steered {df['steer_covers'].mean():.1%} "
        f"(binomial s.e. ±{se:.1%})"
    )


def _losers(df: pd.DataFrame, lost: pd.DataFrame) -> str:
    if lost.empty:
        return "0"
    return (
        f"{len(lost)}; their median α {lost['alpha'].median():.2f} (all: "
        f"{df['alpha'].median():.2f}), median C share {lost['C_share'].median():.2f} (all: "
        f"{df['C_share'].median():.2f})"
    )


BANDS = {"alpha": (0.35, 0.7), "C_share": (0.15, 0.3)}


def _bands(df: pd.DataFrame, value: pd.Series, lost: pd.Series, fmt: str) -> str:
    """value's median and the share of laws lost, per band of α and of C share."""
    out = []
    for col, (a, b) in BANDS.items():
        band = pd.cut(df[col], [-np.inf, a, b, np.inf], labels=[f"<= {a}", f"{a}-{b}", f"> {b}"])
        parts = []
        for label in band.cat.categories:
            at = band == label
            share = f"{lost[at].mean():.0%} of {int(at.sum())}"
            parts.append(f"{label}: {fmt.format(value[at].median())} ({share})")
        out.append(f"{'α' if col == 'alpha' else 'C share'} " + ", ".join(parts))
    return "; ".join(out)


def summarise_match(name: str, df: pd.DataFrame) -> str:
    """Markdown lines for one goal, per-law matching mode."""
    saving = np.where(df["reached"], 1 - df["steer_cost"] / df["grid_cost"], np.nan)
    lost = df[~df["reached"] | (saving <= 0)]
    out = [
        f"### {name}, per-law matching ({len(df)} laws)",
        "",
        f"- reached the grid's width within the grid's compute: {df['reached'].mean():.1%}",
        "- compute saved where reached, q10/q25/q50/q75/q90: "
        + (_q(saving) if np.isfinite(saving).any() else "-"),
        "- compute saved, all laws (0: spent the grid's budget), q10/q25/q50/q75/q90: "
        + _q(1 - df["steer_cost"] / df["grid_cost"]),
        f"- median relative compute (steered / grid): "
        f"{np.median(df['steer_cost'] / df['grid_cost']):.2f}",
        f"- median 90% width: grid {df['grid_width'].median():.3g}, steered "
        f"{df['steer_width'].median():.3g}",
        f"- coverage of the truth by the 90% interval: {_coverage(df)}",
        f"- stops: {df['stop'].value_counts().to_dict()}; fell back to the grid: "
        f"{int(df['fallback'].sum())}; median sizes {df['sizes'].median():g}, "
        f"median cells {df['cells'].median():g} (grid: {len(GRID) * GRID_REPS})",
        f"- laws where steering loses (not reached or no saving): {_losers(df, lost)}",
        "- median saving, all laws (share of laws lost), by band: "
        + _bands(
            df, 1 - df["steer_cost"] / df["grid_cost"], ~df["reached"] | (saving <= 0), "{:.0%}"
        ),
        "",
    ]
    return "\n".join(out)


def summarise_budget(name: str, mode: str, df: pd.DataFrame) -> str:
    """Markdown lines for one goal, budget-matched mode (the criterion's medians over laws)."""
    both_inf = np.isinf(df["steer_width"]) & np.isinf(df["grid_width"])
    ratio = (df["steer_width"] / df["grid_width"]).where(~both_inf, 1.0)  # inf: never reached
    wider = df[ratio > 1]
    grid_med, steer_med = df["grid_width"].median(), df["steer_width"].median()
    cov = df["steer_covers"].mean()
    met = steer_med <= grid_med and 0.85 <= cov <= 0.97
    out = [
        f"### {name}, budget {mode[2:]} x the grid's compute ({len(df)} laws)",
        "",
        "- compute used (steered / grid), q10/q25/q50/q75/q90: "
        + _q(df["steer_cost"] / df["grid_cost"], "{:.2f}"),
        f"- median 90% width over laws: grid {grid_med:.3g}, steered {steer_med:.3g} "
        f"(steered/grid {steer_med / grid_med:.3f})",
        "- per-law width ratio steered/grid, q10/q25/q50/q75/q90: " + _q(ratio, "{:.2f}"),
        f"- coverage of the truth by the 90% interval: {_coverage(df)}",
        f"- stops: {df['stop'].value_counts().to_dict()}; fell back to the grid: "
        f"{int(df['fallback'].sum())}; median sizes {df['sizes'].median():g}, "
        f"median cells {df['cells'].median():g} (grid: {len(GRID) * GRID_REPS})",
        f"- laws where steered is wider than the grid: {_losers(df, wider)}",
        "- median per-law width ratio (share of laws wider), by band: "
        + _bands(df, ratio, ratio > 1, "{:.2f}"),
        f"- criterion (median width <= the grid's, coverage 85-97%): {'met' if met else 'NOT met'}",
        "",
    ]
    return "\n".join(out)


def summarise(df: pd.DataFrame) -> str:
    parts = []
    for (name, mode), part in df.groupby(["goal", "mode"], sort=False):
        if mode == "match":
            parts.append(summarise_match(name, part))
        else:
            parts.append(summarise_budget(name, mode, part))
    return "\n".join(parts)


def design_widths(
    post: Posterior, goals: list[Goal], design: dict[int, int], ci: float = 0.9
) -> np.ndarray:
    """Each goal's linearised 90% width (t x the posterior sd, absolute) a design {n: repetitions}
    would give under post's (α, ρ, D, C, φ) points and noise trend: what a study that knew the
    law could plan for, the same quantity steering's width score predicts."""
    sizes, counts = np.array(list(design), float), np.array(list(design.values()))
    cells = Cells(
        np.repeat(sizes, counts),
        np.concatenate([np.arange(k) for k in counts]),
        np.zeros(counts.sum()),
    )
    sd = np.sqrt(post.cell_variance(cells.n))
    sigma = [correlation(cells.same_repetition, rho) * np.outer(sd, sd) for rho in post.rho_grid]
    hypo = replace(post, cells=cells, sd=sd, precision=np.linalg.inv(np.stack(sigma)))
    cov = laplace_covariance(hypo)
    grads = [goal.gradient(post) for goal in goals]
    var = [post.prob @ np.einsum("ki,kij,kj->k", g, cov, g) for g in grads]
    return t_dist.ppf(0.5 + ci / 2, design_dof(sizes, counts)) * np.sqrt(var)


def oracle_law(i: int, seed: int, fraction: float, tries: int) -> list[dict]:
    """The narrowest design (random search over 4-7 candidate sizes x 2-10 repetitions) within
    fraction x the grid's compute, by design_width under the grid's posterior (the law as
    well as the grid knows it), against the grid's own design_width, per goal."""
    law = draw_law(seed * 100_000 + i)
    rng = np.random.default_rng([seed, i, 1])
    grid_cells = [c for n in GRID for c in law.cells(rng, n, range(GRID_REPS))]
    post = posterior(measured_groups(pd.DataFrame(grid_cells)))
    sizes = np.array(candidate_sizes(N_MIN, POOL))
    seconds = 30 + 0.01 * sizes  # the law's cost without its noise
    budget = fraction * GRID_REPS * float(np.sum(30 + 0.01 * np.array(GRID)))
    search = np.random.default_rng([seed, i, 3])
    designs = []
    while len(designs) < tries:
        pick = np.sort(search.choice(sizes.size, search.integers(4, 8), replace=False))
        reps = search.integers(2, 11, pick.size)
        while reps @ seconds[pick] > budget:  # drop repetitions at random until it fits
            reps[search.integers(pick.size)] -= 1
            reps = np.maximum(reps, 0)
        if (reps >= 2).sum() >= 4:
            designs.append({int(sizes[k]): int(r) for k, r in zip(pick, reps, strict=True) if r})
    goals = {name: goal for name, (goal, _) in goals_for(law, rng).items()}
    grid = design_widths(post, [*goals.values()], dict.fromkeys(GRID, GRID_REPS))
    widths = np.array([design_widths(post, [*goals.values()], d) for d in designs])
    rows = []
    for k, name in enumerate(goals):
        best = int(np.argmin(widths[:, k]))
        rows.append(
            {
                "goal": name,
                "law": i,
                "alpha": law.alpha,
                "C_share": law.C / law.mae(N_MIN),
                "ratio": widths[best, k] / grid[k],
                "design": designs[best],
            }
        )
    return rows


def oracle(laws: int, seed: int, fraction: float, tries: int, jobs: int) -> str:
    """Per goal: the best design's width over the grid's (quantiles, by band of α)."""
    work = partial(oracle_law, seed=seed, fraction=fraction, tries=tries)
    with multiprocessing.Pool(jobs) if jobs > 1 else _Serial() as pool:
        df = pd.DataFrame([row for part in pool.imap(work, range(laws)) for row in part])
    lines = []
    for name, part in df.groupby("goal", sort=False):
        lines += [
            f"### {name}: narrowest design within {fraction:g} x the grid's compute, "
            f"{tries} random designs per law ({len(part)} laws)",
            "",
            "- linearised width / the grid's, q10/q25/q50/q75/q90: " + _q(part["ratio"], "{:.2f}"),
            "- by band (share of laws where no design found matches the grid): "
            + _bands(part, part["ratio"], part["ratio"] > 1, "{:.2f}"),
            *(
                f"- law {r.law} (α {r.alpha:.2f}): {r.ratio:.3f} {r.design}"
                for r in part.itertuples()
            ),
            "",
        ]
    return "\n".join(lines)


def replay_pool(folder: str) -> pd.DataFrame:
    """The folder's cells as steering buys them (unit_cells at the config's headline m), in
    ledger order; without timing fields the prior cost a + b·n stands in (said so)."""
    study = StudyFolder(folder)
    pool = unit_cells(study.ledger(), headline_m(study.config()))
    if not np.isfinite(pool["s"]).any():
        print("ledger has no timing fields: seconds per cell from the prior a + b·n")
    return pool.assign(s=pool["s"].where(np.isfinite(pool["s"]), PRIOR_COST(pool["n"])))


def replay(
    folder: str,
    target_mae: float | None,
    gamma: float,
    top: int | None = 3,
    score: str = "width",
    fractions: tuple[float, ...] = (0.5, 0.7),
    blocks: tuple[int, ...] = Plan.blocks,
) -> str:
    pool = replay_pool(folder)
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
    most = max(len(v) for v in by_size.values())

    def draw(n: int, reps: range) -> list[dict]:
        return by_size[n][reps.start : reps.stop]

    def exhausted(table: pd.DataFrame) -> frozenset[int]:
        have = table["n"].value_counts()
        return frozenset(n for n in sizes if have.get(n, 0) >= len(by_size[n]))

    def run(goal: Goal, precision: float, budget: float) -> dict:
        plan = Plan(
            precision=precision,
            candidates=tuple(int(n) for n in sizes),
            grid=opening,
            grid_repetitions=most,
            gamma=gamma,
            max_repetitions=most,
            top_repetitions=top,
            score=score,
            blocks=blocks,
        )
        return steer(goal, plan, draw, budget, busy_of=exhausted)

    lines = [
        f"replay of {folder}: {len(pool)} cells over {len(sizes)} sizes, {total:.0f} s; "
        f"target MAE {target_mae:.4g}; opening {list(opening)}",
        "",
        "| goal | full-grid 90% interval | width | steered interval | width | compute used | "
        "stop | " + " | ".join(f"width at {f:g} x compute (stop)" for f in fractions) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(fractions),
    ]
    for name, goal in goals.items():
        g = goal_interval(full, goal)
        s = run(goal, g.width, total)
        iv = s["interval"]
        at = [run(goal, 0.0, f * total) for f in fractions]
        lines.append(
            f"| {name} | [{g.lo:.4g}, {g.hi:.4g}] | {g.width:.3g} | [{iv.lo:.4g}, {iv.hi:.4g}] | "
            f"{iv.width:.3g} | {s['spent'] / total:.0%} | {s['decisions'][-1].stop_reason} | "
            + " | ".join(
                f"{r['interval'].width:.3g} ({r['decisions'][-1].stop_reason})" for r in at
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--laws", type=int, default=300)
    ap.add_argument("--first", type=int, default=0, help="run laws first..laws-1 (to split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument(
        "--modes",
        default="match,f=0.5,f=0.7",
        help="match (per-law width, the grid's compute) and/or f=x (x times the grid's compute)",
    )
    ap.add_argument("--top-repetitions", type=int, default=3, help="Plan.top_repetitions")
    ap.add_argument("--score", default="width", choices=("variance", "width"))
    ap.add_argument("--blocks", default="1,2,4", help="Plan.blocks (1: the previous policy)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--csv", help="write the per-law rows here")
    ap.add_argument("--from-csv", help="summarise the per-law rows of an earlier run")
    ap.add_argument("--replay", metavar="DIR")
    ap.add_argument("--oracle", type=int, metavar="LAWS", help="best designs that know the law")
    ap.add_argument("--oracle-tries", type=int, default=800)
    ap.add_argument("--oracle-fraction", type=float, default=0.7)
    ap.add_argument("--target-mae", type=float)
    args = ap.parse_args()
    blocks = tuple(int(b) for b in args.blocks.split(","))
    if args.replay:
        print(
            replay(
                args.replay,
                args.target_mae,
                args.gamma,
                args.top_repetitions,
                args.score,
                blocks=blocks,
            )
        )
        return
    if args.oracle:
        print(oracle(args.oracle, args.seed, args.oracle_fraction, args.oracle_tries, args.jobs))
        return
    if args.from_csv:
        print(summarise(pd.read_csv(args.from_csv)))
        return
    t0, c0 = time.perf_counter(), time.process_time()
    modes = tuple(args.modes.split(","))
    if args.csv and os.path.exists(args.csv):
        os.remove(args.csv)
    df = synthetic(
        args.laws,
        args.seed,
        args.gamma,
        modes,
        args.top_repetitions,
        args.score,
        args.jobs,
        args.csv,
        args.first,
        blocks,
    )
    print(
        f"steered vs grid {len(GRID)} sizes x {GRID_REPS} repetitions, {args.laws} laws, "
        f"gamma {args.gamma}, opening {list(OPENING)} x2 (largest x"
        f"{args.top_repetitions or 2}), score {args.score}, blocks {list(blocks)}, "
        f"modes {list(modes)}: "
        f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU (main "
        f"process), load {os.getloadavg()[0]:.1f}\n"
    )
    print(summarise(df))


if __name__ == "__main__":
    main()
