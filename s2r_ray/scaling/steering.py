"""Steering a scaling study: after each finished size, what to measure next, or why to stop.

The goal is one number (the MAE at a size n*, the n needed for a target MAE, or the gap C), its
interval comes from the cell-level posterior (posterior.py: repetitions share a split, so cells
of one repetition are correlated across sizes), and each candidate (a new size inside the
source pool, or a block of 1, 2 or 4 more repetitions of a measured one, on the next splits
there) is scored by the expected drop in the goal's squared interval width from its cells: the
drop in its posterior variance (through the information a cell correlated with its
repetition's other cells adds, averaged over the posterior) with the t quantile the design's
degrees of freedom give before and after (Plan.score 'width'; 'variance' drops the t quantile,
V-optimal), divided by cost^γ (γ < 1, or every choice drifts to the cheapest, least
informative sizes). Guards: the config's sizes open the study, at least min_sizes distinct
sizes are measured, and a law that fails its lack-of-fit F test sends the study back to the
fixed grid, saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import t as t_dist

from s2r_ray.scaling.bootstrap import interval
from s2r_ray.scaling.cost import CostModel
from s2r_ray.scaling.estimator import POOR_FIT_P, size_or_unreachable
from s2r_ray.scaling.groups import Groups, group_repetitions
from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.posterior import (
    Posterior,
    design_dof,
    jacobian,
    laplace_covariance,
    posterior,
)
from s2r_ray.scaling.powerlaw import Params

GoalKind = Literal["mae_at", "n_for_target", "gap"]
NEAR = np.log(1.3)  # a candidate this close (in log n) to a measured size is that size
NO_GAIN = 1e-3  # a best candidate cutting the goal's variance by less than this cannot help


@dataclass(frozen=True)
class Goal:
    """What the study must pin down: E(n) at n (mae_at), n for target_mae, or C (gap)."""

    kind: GoalKind
    n: float | None = None
    target_mae: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "mae_at" and not (self.n and self.n > 0):
            raise ValueError("goal mae_at needs the size n whose MAE is wanted")
        if self.kind == "n_for_target" and not (self.target_mae and self.target_mae > 0):
            raise ValueError("goal n_for_target needs a positive target_mae")

    @property
    def log_scale(self) -> bool:
        """The n for a target spans decades: its precision is ln(hi/lo), not (hi-lo)/point."""
        return self.kind == "n_for_target"

    @property
    def label(self) -> str:
        if self.kind == "mae_at":
            return f"MAE at n={self.n:,.0f}"
        if self.kind == "n_for_target":
            return f"n for MAE {self.target_mae:g}"
        return "transfer gap C"

    def values(self, d_ref: np.ndarray, alpha: np.ndarray, c: np.ndarray, n_ref: float):
        """The goal for each parameter draw (inf where a target is never reached)."""
        p = Params(d_ref, alpha, c, n_ref)
        if self.kind == "mae_at":
            return p.predict(np.float64(self.n))
        if self.kind == "n_for_target":
            return p.size_for(self.target_mae)
        return np.asarray(c, float)

    def gradient(self, post: Posterior) -> np.ndarray:
        """(A, 3) gradient in (D_ref, α, C) at each grid α (of ln n for n_for_target)."""
        d, c, a = post.beta[:, 0], post.beta[:, 1], post.alpha
        one, zero = np.ones_like(a), np.zeros_like(a)
        if self.kind == "gap":
            return np.stack([zero, zero, one], -1)
        if self.kind == "mae_at":
            x = (self.n / post.n_ref) ** -a
            return np.stack([x, -d * x * np.log(self.n / post.n_ref), one], -1)
        t = float(self.target_mae)  # ln n = ln n_ref + (ln D_ref - ln(t - C)) / α, clipped
        d, gap = np.maximum(d, 1e-3 * t), np.maximum(t - c, 1e-3 * t)
        return np.stack([1 / (a * d), -np.log(d / gap) / a**2, 1 / (a * gap)], -1)


@dataclass(frozen=True)
class Interval:
    """A goal's posterior point (median) and central interval; width is relative."""

    point: float
    lo: float
    hi: float
    log_scale: bool = False

    @property
    def width(self) -> float:
        if self.log_scale:
            return float(np.log(self.hi / self.lo)) if self.lo > 0 else float("inf")
        return float((self.hi - self.lo) / abs(self.point)) if self.point else float("inf")

    def shrunk(self, factor: float) -> Interval:
        """The interval narrowed by factor about its point (what a decision predicts)."""
        if self.log_scale:
            lo = self.point * (self.lo / self.point) ** factor
            hi = self.point * (self.hi / self.point) ** factor
        else:
            lo = self.point - factor * (self.point - self.lo)
            hi = self.point + factor * (self.hi - self.point)
        return Interval(self.point, float(lo), float(hi), self.log_scale)

    def to_dict(self) -> dict:
        """JSON: an n never reached is 'unreachable', as in PowerLawFit's report."""
        out = asdict(self) | {"width": self.width}
        if self.log_scale:
            out |= {k: size_or_unreachable(out[k]) for k in ("point", "lo", "hi")}
        return json_safe(out)


def goal_interval(post: Posterior, goal: Goal, ci: float = 0.9, seed: int = 0) -> Interval:
    """The goal's median and central ci interval over posterior draws."""
    q = goal.values(*post.samples(seed), post.n_ref)
    lo, hi = interval(q, ci)
    return Interval(float(np.median(q)), float(lo), float(hi), goal.log_scale)


@dataclass(frozen=True)
class Plan:
    """The steering policy: the study's sizes and source pool, and how to choose among them.

    grid × grid_repetitions is the fixed design: its sizes open the study at
    opening_repetitions each (the largest at top_repetitions, when given: the noise at the
    end an extrapolation rests on is then known from the start), and it is what the study
    falls back to when the law fails.
    candidates are the new sizes steering may add (candidate_sizes: log-spaced in the pool).
    blocks: how many repetitions one decision may add at a size (a new size opens with at least
    new_size_repetitions): a single repetition buys little alone, the noise and the t dof at a
    size are pinned by several together, so a block is scored as one move (benchmarks/steering.md).
    score 'variance': a candidate's value is the expected drop in the goal's variance; 'width':
    the drop in the squared interval width, t quantile included (t_ν²·variance, ν from
    design_dof: what a candidate's cells add to the noise trend's degrees of freedom).
    """

    precision: float
    candidates: tuple[int, ...]
    grid: tuple[int, ...] = ()
    grid_repetitions: int = 5
    opening_repetitions: int = 2
    gamma: float = 0.5
    min_sizes: int = 4
    new_size_repetitions: int = 2
    max_repetitions: int = 10
    max_new_sizes: int | None = None
    ci: float = 0.9
    seed: int = 0
    top_repetitions: int | None = None
    score: Literal["variance", "width"] = "width"
    blocks: tuple[int, ...] = (1, 2, 4)

    def opening(self) -> dict[int, int]:
        """Repetitions each grid size opens with."""
        out = {n: self.opening_repetitions for n in self.grid}
        if self.grid and self.top_repetitions is not None:
            out[max(self.grid)] = max(self.top_repetitions, self.opening_repetitions)
        return out


def candidate_sizes(n_min: int, pool_max: int, per_decade: int = 4) -> tuple[int, ...]:
    """Log-spaced sizes from n_min to the whole source pool, pool_max included."""
    count = max(2, int(np.ceil(per_decade * np.log10(pool_max / n_min))) + 1)
    return tuple(sorted({round(float(v)) for v in np.geomspace(n_min, pool_max, count)}))


@dataclass(frozen=True)
class Decision:
    """One steering decision, as the study records it (to_dict is its JSON line).

    action 'measure': run `repetitions` more cells at n (new_size: n not yet measured);
    'stop': stop_reason is 'precise', 'budget', 'no_gain' or 'grid_done'.
    before is the goal's interval now; after the interval predicted once the cells are in.
    """

    action: Literal["measure", "stop"]
    reason: str
    goal: str
    sizes_measured: int
    n: int | None = None
    repetitions: int = 0
    new_size: bool = False
    stop_reason: str | None = None
    before: Interval | None = None
    after: Interval | None = None
    cost_seconds: float = 0.0
    score: float | None = None
    fallback: bool = False
    when: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("before", "after"):
            value = getattr(self, key)
            out[key] = None if value is None else value.to_dict()
        return json_safe(out)


@dataclass(frozen=True)
class _Budget:
    seconds: float | None
    cells: int | None

    def allows(self, cost: float, cells: int) -> bool:
        return (self.seconds is None or cost <= self.seconds) and (
            self.cells is None or cells <= self.cells
        )


def measured_groups(cells: pd.DataFrame) -> Groups:
    """Finished source sizes (n > 0, finite MAE), their repetitions and (if given) which."""
    n = pd.to_numeric(cells["n"], errors="coerce")
    mae = pd.to_numeric(cells["mae"], errors="coerce")
    keep = np.isfinite(n) & np.isfinite(mae) & (n > 0)
    table = pd.DataFrame({"n": n[keep], "mae": mae[keep]})
    if "repetition" in cells:
        table["repetition"] = cells["repetition"][keep]
    return group_repetitions(table)


def propose(
    cells: pd.DataFrame,
    goal: Goal,
    plan: Plan,
    cost: CostModel,
    budget_seconds: float | None = None,
    budget_cells: int | None = None,
    busy: frozenset[int] = frozenset(),
    when: str | None = None,
    used: Mapping[int, int] | None = None,
) -> Decision:
    """The next cells to run, or a stop with its reason, given the finished cells (n, mae).

    budget_seconds / budget_cells: what is left (None: no limit). busy: sizes not to propose
    now (cells still running there, or a replayed pool exhausted). used: repetitions each size
    has taken, failed ones included (default: its finished cells); a block must fit beside them
    in max_repetitions. Cells at n = 0 (the baseline) and unfinished ones are ignored; pass one
    m (the headline target size) per cell.
    """
    groups = measured_groups(cells)
    budget = _Budget(budget_seconds, budget_cells)
    counts = dict(zip(groups.n.astype(int).tolist(), groups.counts.tolist(), strict=True))
    common = {"goal": goal.label, "sizes_measured": groups.size_count, "when": when}
    opening = _grid_step(counts, plan.opening(), busy)
    if opening is not None:
        return _measure(opening, counts, cost, budget, common, "opening grid", fallback=False)
    if groups.size_count < 3:
        return _spread(groups, plan, cost, budget, busy, common)
    post = posterior(groups)
    before = goal_interval(post, goal, plan.ci, plan.seed)
    common["before"] = before
    p = post.law_p_value
    if p is not None and p < POOR_FIT_P:
        step = _grid_step(counts, dict.fromkeys(plan.grid, plan.grid_repetitions), busy)
        f, d1, d2 = post.lack_of_fit
        why = f"the law does not hold (lack of fit F = {f:.3g} on {d1}/{d2} dof, p = {p:.2g})"
        why += ": fixed grid"
        if step is None:
            return Decision("stop", why + " done", stop_reason="grid_done", fallback=True, **common)
        return _measure(step, counts, cost, budget, common, why, fallback=True)
    enough_sizes = groups.size_count >= plan.min_sizes
    if enough_sizes and np.isfinite(before.width) and before.width <= plan.precision:
        why = f"{goal.label}: {plan.ci:.0%} width {before.width:.3g} <= {plan.precision:g}"
        return Decision("stop", why, stop_reason="precise", **common)
    moves = _candidates(groups, plan, counts | dict(used or {}), busy, enough_sizes)
    return _best(post, goal, plan, cost, budget, moves, counts, common, enough_sizes)


def _grid_step(
    counts: dict[int, int], want: dict[int, int], busy: frozenset[int]
) -> tuple[int, int] | None:
    """The smallest grid size short of its wanted repetitions (and not busy), and how many it
    lacks."""
    for n in sorted(want):
        if counts.get(n, 0) < want[n] and n not in busy:
            return n, want[n] - counts.get(n, 0)
    return None


def _measure(
    step: tuple[int, int],
    counts: dict[int, int],
    cost: CostModel,
    budget: _Budget,
    common: dict,
    why: str,
    fallback: bool,
) -> Decision:
    n, reps = step
    seconds = reps * float(cost(n))
    if not budget.allows(seconds, reps):
        return Decision(
            "stop",
            f"{why}: n={n} x{reps} exceeds the budget",
            stop_reason="budget",
            fallback=fallback,
            **common,
        )
    return Decision(
        "measure",
        why,
        n=n,
        repetitions=reps,
        new_size=n not in counts,
        cost_seconds=seconds,
        fallback=fallback,
        **common,
    )


def _spread(
    groups: Groups, plan: Plan, cost: CostModel, budget: _Budget, busy: frozenset[int], common
) -> Decision:
    """Fewer than 3 sizes, no posterior yet: the candidate farthest (in log n) from them all."""
    cand = np.array([n for n in plan.candidates if n not in busy], float)
    if groups.size_count:
        far = np.abs(np.log(cand[:, None] / groups.n[None, :])).min(axis=1)
    else:
        far = np.log(cand / cand.min())
    for k in np.argsort(-far, kind="stable"):
        n, reps = int(cand[k]), plan.new_size_repetitions
        if far[k] > NEAR and budget.allows(reps * float(cost(n)), reps):
            why = f"fewer than 3 sizes: n={n} spreads the design"
            return Decision(
                "measure",
                why,
                n=n,
                repetitions=reps,
                new_size=True,
                cost_seconds=reps * float(cost(n)),
                **common,
            )
    return Decision("stop", "no new size fits the budget", stop_reason="budget", **common)


def _candidates(
    groups: Groups, plan: Plan, used: dict[int, int], busy: frozenset[int], enough_sizes: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(n, repetitions) of every allowed move: a new size, or a block of repetitions of a
    measured size that fits in max_repetitions."""
    counts = {n: used[n] for n in groups.n.astype(int).tolist()}
    new_sizes = [n for n in counts if n not in plan.grid]
    may_add = plan.max_new_sizes is None or len(new_sizes) < plan.max_new_sizes
    fresh = [
        n
        for n in plan.candidates
        if may_add and n not in busy and np.abs(np.log(n / groups.n)).min() > NEAR
    ]
    opens = sorted({max(plan.new_size_repetitions, b) for b in plan.blocks})
    moves = [(n, b) for n in fresh for b in opens if b <= plan.max_repetitions]
    if enough_sizes:
        moves += [
            (n, b)
            for n, r in counts.items()
            if n not in busy
            for b in sorted(plan.blocks)
            if r + b <= plan.max_repetitions
        ]
    return np.array([m[0] for m in moves], float), np.array([m[1] for m in moves], float)


def next_repetitions(post: Posterior, n: float, count: int) -> list[int]:
    """The repetitions (splits) the next count cells at n use: the lowest ids not measured there.

    A study runs repetition r of every size on split r, so a new cell joins the cells of its
    repetition at the other sizes (correlated through the shared split).
    """
    have = set(post.cells.rep[post.cells.n == n].tolist())
    out, r = [], 0
    while len(out) < count:
        if r not in have:
            out.append(r)
        r += 1
    return out


def expected_drop(post: Posterior, goal: Goal, n: np.ndarray, reps: np.ndarray):
    """(goal variance now, expected drop for each candidate), both averaged over the posterior.

    At each (α, ρ) point the goal's variance is gᵀVg with V the local 3-parameter covariance
    (laplace_covariance: JᵀΣ⁻¹J/φ over the cells, their correlation included). A new cell in
    repetition r is correlated with r's cells at other sizes (block b): exactly, it adds the
    information of its part not predicted by them, gradient j̃ = j - aᵀJ_b with a = Σ_b⁻¹Σ_b,new
    and variance v = σ² - Σ_new,b a (the Schur complement). Cells of one candidate lie in
    different repetitions, so they add one after the other (Sherman-Morrison each):
    the drop is exact for the linearised law at each point, not an approximation of the
    correlation.
    """
    cov = laplace_covariance(post)
    g = goal.gradient(post)
    var_k = ((cov @ g[..., None])[..., 0] * g).sum(-1)
    cells = post.cells
    jac_cells = jacobian(post, cells.n)  # (K, N, 3)
    j_new = jacobian(post, n)  # (K, C, 3)
    slots = int(reps.max()) if reps.size else 0
    v = np.broadcast_to(cov[:, None], (cov.shape[0], n.size, 3, 3))
    for slot in range(slots):
        u = np.zeros_like(j_new)
        for c in np.flatnonzero(reps > slot):
            r = next_repetitions(post, float(n[c]), int(reps[c]))[slot]
            u[:, c] = _conditional_gradient(post, float(n[c]), r, j_new[:, c], jac_cells)
        vu = (v @ u[..., None])[..., 0]
        v = v - vu[..., :, None] * vu[..., None, :] / (1 + (u * vu).sum(-1))[..., None, None]
    after = ((v @ g[:, None, :, None])[..., 0] * g[:, None, :]).sum(-1)
    return float(post.prob @ var_k), post.prob @ (var_k[:, None] - after)


def _conditional_gradient(post: Posterior, n: float, r: int, j: np.ndarray, jac_cells: np.ndarray):
    """(K, 3) the new cell's gradient over its noise sd, given the cells of its repetition r."""
    cells = post.cells
    measured = cells.n == n
    sd_new = post.sd[measured][0] if measured.any() else float(np.sqrt(post.cell_variance(n)))
    block = cells.rep == r
    jt = j.copy()
    var_new = np.full(post.alpha.size, sd_new**2)
    if block.any():
        sb = post.sd[block]
        jac_b = jac_cells[:, block]
        for p in np.unique(post.rho_index):
            k = post.rho_index == p
            cross = post.rho_grid[p] * sd_new * sb  # Σ_b,new
            a = post.precision[p][np.ix_(block, block)] @ cross
            jt[k] -= np.einsum("b,kbi->ki", a, jac_b[k])
            var_new[k] = sd_new**2 - cross @ a
    return jt / np.sqrt(np.maximum(var_new, 1e-300) * post.phi)[:, None]


def _t2(ci: float, n: np.ndarray, counts: np.ndarray) -> float:
    """The squared t quantile of a ci interval for the design (n, counts)."""
    return float(t_dist.ppf(0.5 + ci / 2, design_dof(n, counts)) ** 2)


def _with(groups: Groups, n: float, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """The design (sizes, counts) once reps more cells at n are in."""
    sizes, counts = groups.n.astype(float), groups.counts.astype(int).copy()
    at = np.flatnonzero(sizes == n)
    if at.size:
        counts[at[0]] += reps
        return sizes, counts
    return np.append(sizes, n), np.append(counts, reps)


def _best(
    post: Posterior,
    goal: Goal,
    plan: Plan,
    cost: CostModel,
    budget: _Budget,
    moves: tuple[np.ndarray, np.ndarray],
    counts: dict[int, int],
    common: dict,
    enough_sizes: bool,
) -> Decision:
    n, reps = moves
    seconds = reps * cost(n)
    ok = np.array([budget.allows(s, int(r)) for s, r in zip(seconds, reps, strict=True)], bool)
    if not ok.any():
        why = "no candidate fits the budget left" if n.size else "no candidate left to measure"
        return Decision("stop", why, stop_reason="budget" if n.size else "no_gain", **common)
    n, reps, seconds = n[ok], reps[ok], seconds[ok]
    var, drop = expected_drop(post, goal, n, reps)
    if plan.score == "width":
        now = _t2(plan.ci, post.groups.n, post.groups.counts) * var
        t2 = [
            _t2(plan.ci, *_with(post.groups, float(m), int(r)))
            for m, r in zip(n, reps, strict=True)
        ]
        after = np.array(t2) * (var - drop)
        drop, var = now - after, now
    what = "squared width" if plan.score == "width" else "variance"
    score = drop / seconds**plan.gamma
    k = int(np.argmax(score))
    share = float(drop[k] / var) if var > 0 else 0.0
    if enough_sizes and share < NO_GAIN:
        why = f"the best candidate (n={int(n[k])}) would cut the {what} by {share:.1e}"
        return Decision("stop", why, stop_reason="no_gain", **common)
    size = int(n[k])
    new = size not in counts
    why = (
        f"{'new size' if new else 'repetitions'} n={size} x{int(reps[k])}: expected {what} drop "
        f"{share:.1%} for {seconds[k]:.3g} s (score drop/cost^{plan.gamma:g})"
    )
    if not enough_sizes:
        why = f"fewer than {plan.min_sizes} sizes; " + why
    after = common["before"].shrunk(float(np.sqrt(max(1 - share, 0.0))))
    return Decision(
        "measure",
        why,
        n=size,
        repetitions=int(reps[k]),
        new_size=new,
        cost_seconds=float(seconds[k]),
        score=float(score[k]),
        after=after,
        **common,
    )
