"""An exact posterior of E(n) = D·n^-α + C on a grid of α, cheap enough to refit at every step.

The fit is at the cell level (one cell: a size n, a repetition r, its MAE). A repetition is one
experimental train/test split shared by every size, so the cells of one repetition are
correlated: Cov = φ·Σ with Σ = S·R·S, S the per-size noise sd (smooth in n, noise_sd) and R the
correlation ρ between two cells of the same repetition (1 on the diagonal). Given α and ρ the
law is linear in (D, C): generalised least squares gives their conditional mean and
covariance in closed form, and Σ⁻¹ does not depend on α, so the whole α grid costs one einsum
per ρ. ρ is not plugged in: it has its own grid (flat prior on [0, 0.9]) and is integrated out
with α. The overall scale φ has a flat prior on log φ and is integrated out: (D, C) given (α, ρ)
is Student-t with N - 2 degrees of freedom (N cells), so a law that misfits widens the
intervals. Samples respect D >= 0 and C >= 0 by rejection, exact for the truncated posterior.
The law's check is a lack-of-fit F test: the GLS misfit of the law against free size means
under the same Σ. Used by steering, which needs the goal's interval and how one more cell would
shrink it (information), and by pricing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import digamma, gammaln, polygamma
from scipy.stats import f as f_dist

from s2r_ray.scaling.groups import Groups, group_repetitions

# flat prior on α over (0, 2.5]: wider than any α a Sim2Real curve has shown (science.md: 0.01
# to 0.5), and fine enough that neighbouring grid points give nearly the same curve
ALPHA = np.linspace(0.005, 2.5, 300)
# flat prior on the within-repetition correlation: splits shared by all sizes make it >= 0
RHO = np.linspace(0.0, 0.9, 10)
SAMPLES = 4000
PRUNE = 1e-9  # (α, ρ) points this much less probable than the best are dropped
# prior sd of the noise trend's slope and curvature (ln s² = d + b·x + a·x², x = ln n about the
# measured sizes' centre): a slope of 1 is noise variance ∝ n (sd ∝ √n); a curvature of 0.2
# lets the slope change by 0.4 per e-fold of n (a C > 0 bends ln E(n) by at most α²/4)
TREND_PRIOR_SD = (1.0, 0.2)


@dataclass(frozen=True)
class Cells:
    """The cells of a fit, sorted by size: n, repetition code (-1: unknown), value."""

    n: np.ndarray
    rep: np.ndarray
    y: np.ndarray

    @classmethod
    def of(cls, data: Groups | pd.DataFrame) -> Cells:
        """From Groups or a table with columns n, mae and (optionally) repetition."""
        g = data if isinstance(data, Groups) else group_repetitions(data)
        ok = ~np.isnan(g.values)
        n = np.broadcast_to(g.n[:, None], g.values.shape)[ok]
        rep = -np.ones(ok.sum(), int) if g.repetitions is None else g.repetitions[ok]
        rep = np.where(np.isnan(rep), -1, rep).astype(int)
        return cls(n.astype(float), rep, g.values[ok].astype(float))

    @property
    def same_repetition(self) -> np.ndarray:
        """(N, N) 1 where two distinct cells share a known repetition."""
        same = (self.rep[:, None] == self.rep[None, :]) & (self.rep[:, None] >= 0)
        np.fill_diagonal(same, False)
        return same.astype(float)


@dataclass(frozen=True)
class NoiseTrend:
    """ln s²(n) as a polynomial in ln n, held constant outside the measured range."""

    coef: np.ndarray
    log_lo: float
    log_hi: float
    coef_cov: np.ndarray | None = None  # sampling covariance of coef (ln s² has known variance)

    def log_var_variance(self, n: float) -> float:
        """Sampling variance of the trend's ln s² at n (0 without repetitions)."""
        if self.coef_cov is None:
            return 0.0
        x = np.clip(np.log(n), self.log_lo, self.log_hi) ** np.arange(self.coef.size)[::-1]
        return float(x @ self.coef_cov @ x)

    def var(self, n: np.ndarray) -> np.ndarray:
        x = np.clip(np.log(np.asarray(n, float)), self.log_lo, self.log_hi)
        return np.exp(np.polyval(self.coef, x))


def noise_sd(groups: Groups) -> tuple[np.ndarray, NoiseTrend, float]:
    """Per-size noise sd of one cell (the shape of S; φ scales it), its trend, and the dof.

    A size with 2 repetitions estimates its variance with 1 degree of freedom, and ln s² then
    has sd 2.2: each size alone is useless, so ln s² (corrected for its bias ψ(k/2) - ln(k/2),
    weighted by 1/ψ'(k/2), its variance) is regressed on ln n, pooling every size, and each
    size takes the trend's value. The trend is quadratic (noise that shrinks with n and
    flattens is convex in ln n: a line understates it at both ends) with priors on its slope
    and curvature (_trend_design); outside the measured sizes it is held constant. The
    within-size spread estimates a cell's whole variance, offset included, because
    repetitions draw independent splits.

    The third value is what Σ_s SS_s/σ̂_s² is expected to be in units of φ: the trend follows
    each size's own ln s² with its leverage h, so SS_s/σ̂_s² is smaller than its k_s degrees
    of freedom (E[X^(1-h)]·e^(h·E ln X) for X ~ χ²_k, times the other sizes' share). φ̂
    divides the GLS misfit by this, not by N, or the noise comes out ~20% low in variance.
    """
    k = np.maximum(groups.counts - 1, 0)
    ss = np.nansum((groups.values - groups.means[:, None]) ** 2, axis=1)
    has = (k > 0) & (ss > 0)
    log_n = np.log(groups.n)
    lo, hi = float(log_n.min()), float(log_n.max())
    if not has.any():  # no repetitions anywhere: equal sd, φ (the residuals) sets the scale
        return np.ones(groups.size_count), NoiseTrend(np.array([0.0]), lo, hi), 0.0
    kh = k[has].astype(float)
    ln_s2 = np.log(ss[has] / kh) - (digamma(kh / 2) - np.log(kh / 2))
    solve, weight, coef_cov, within = _trend_design(log_n, k, has)
    coef = solve @ (weight * ln_s2)
    trend = NoiseTrend(coef, float(log_n[has].min()), float(log_n[has].max()), coef_cov)
    return np.sqrt(trend.var(groups.n)), trend, within


def _trend_design(log_n: np.ndarray, k: np.ndarray, has: np.ndarray):
    """The noise trend's solve matrix, weights, coefficient covariance and expected
    within-size SSE: coef = solve @ (weight·ln s²), in np.polyval's order.

    The trend is quadratic in ln n whatever the number of sizes, with a flat prior on its
    level and Gaussian priors on its slope and curvature (TREND_PRIOR_SD, at the centre of the
    measured sizes): its flexibility does not jump when a size is added, and with few sizes
    the prior, not a switch of degree, holds it. All depend on the sizes and their degrees of
    freedom only, not on the values: what a design would give is known before its cells run.
    """
    kh = k[has].astype(float)
    weight = 1.0 / polygamma(1, kh / 2)
    centre = float(np.mean(log_n[has]))
    x = log_n[has] - centre
    design = np.stack([x**2, x, np.ones_like(x)], -1)
    prior = np.diag([TREND_PRIOR_SD[1] ** -2, TREND_PRIOR_SD[0] ** -2, 0.0])
    cov_c = np.linalg.inv(design.T @ (weight[:, None] * design) + prior)
    hat = design @ cov_c @ design.T * weight[None, :]  # fitted ln s² = hat @ ln_s2
    within = float(k[~has].sum()) + float(np.sum(kh * _leverage_factor(kh, hat)))
    # a(x-c)² + b(x-c) + d = a x² + (b - 2ac) x + (ac² - bc + d)
    shift = np.array([[1.0, 0.0, 0.0], [-2 * centre, 1.0, 0.0], [centre**2, -centre, 1.0]])
    return shift @ cov_c @ design.T, weight, shift @ cov_c @ shift.T, within


def _leverage_factor(k: np.ndarray, hat: np.ndarray) -> np.ndarray:
    """E[SS_s/σ̂_s²] / k_s when ln σ̂_s² = Σ_j hat_sj (ln SS_j - E ln SS_j) + ln σ_s²."""
    c = digamma(k / 2) + np.log(2.0)  # E ln X, X ~ χ²_k

    def log_moment(p):  # ln E[X^p] e^(-p·E ln X), finite where k/2 + p > 0
        p = np.maximum(p, -k / 2 + 0.05)
        return p * np.log(2.0) + gammaln(k / 2 + p) - gammaln(k / 2) - p * c

    own = log_moment(1 - np.diag(hat)) + c - np.log(k)  # ln E[X^(1-h)] e^(h c) / k
    others = log_moment(-hat)  # (s, j): ln E[X_j^(-h_sj)] e^(h_sj c_j)
    np.fill_diagonal(others, 0.0)
    return np.exp(own + others.sum(axis=1))


def interval_dof(resid_dof: float, shape_var: float) -> float:
    """Student-t dof of (D, C) allowing for the noise shape being estimated, not known.

    φ scales the noise with resid_dof degrees of freedom, but an extrapolation rests on the
    noise at the largest sizes, whose shape the trend estimates with sampling variance
    shape_var (of ln s²). A variance estimate with ν dof has Var(ln s²) = ψ'(ν/2): the dof is
    the ν whose ψ'(ν/2) equals the two variances added. Without it the intervals are too
    narrow whenever the trend happens to understate the noise at the end that matters.
    """
    total = float(polygamma(1, resid_dof / 2)) + shape_var
    lo, hi = 0.05, resid_dof
    for _ in range(60):  # ψ' decreases: bisection in log ν
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if polygamma(1, mid / 2) > total else (lo, mid)
    return float(np.sqrt(lo * hi))


def design_dof(n: np.ndarray, counts: np.ndarray) -> float:
    """The Student-t dof (interval_dof) a design of sizes n with counts cells each would give:
    like the noise trend, it depends on the design only, not on the values, so steering can
    score what the dof a candidate adds is worth before its cells run."""
    n, counts = np.asarray(n, float), np.asarray(counts, int)
    k = np.maximum(counts - 1, 0)
    has = k > 0
    if not has.any():
        return interval_dof(float(max(counts.sum() - 3, 1)), 0.0)
    log_n = np.log(n)
    _, _, coef_cov, within = _trend_design(log_n, k, has)
    resid_dof = float(max(within + n.size - 3, 1))
    x = np.clip(log_n.max(), log_n[has].min(), log_n[has].max()) ** np.arange(3)[::-1]
    return interval_dof(resid_dof, float(x @ coef_cov @ x))


def correlation(same: np.ndarray, rho: float) -> np.ndarray:
    """R: 1 on the diagonal, ρ between cells of the same repetition."""
    return np.eye(same.shape[0]) + rho * same


@dataclass(frozen=True)
class Posterior:
    """Posterior over (α, ρ) points with (D_ref, C) given them; D_ref is D at n_ref.

    Arrays with a leading K run over the kept (α, ρ) grid points: alpha, rho_index, prob, beta
    (D_ref, C), cov (of (D_ref, C) given the point, φ̂ included), phi (φ̂: the GLS misfit
    over its expected value at φ = 1, noise_sd).
    precision[p] is Σ⁻¹ at RHO[p] over the cells (without φ).
    """

    alpha: np.ndarray
    rho_index: np.ndarray
    prob: np.ndarray
    beta: np.ndarray
    cov: np.ndarray
    phi: np.ndarray
    dof: float  # Student-t dof of (D, C) given the point (interval_dof)
    n_ref: float
    groups: Groups
    cells: Cells
    sd: np.ndarray  # (N,) noise sd of each cell (S's diagonal)
    trend: NoiseTrend
    rho_grid: np.ndarray
    precision: np.ndarray  # (P, N, N)
    lack_of_fit: tuple[float, int, int] | None  # F, its numerator and denominator dof

    @property
    def rho(self) -> np.ndarray:
        return self.rho_grid[self.rho_index]

    @property
    def law_p_value(self) -> float | None:
        """P(F this large | the law holds); None without repetitions or spare sizes."""
        if self.lack_of_fit is None:
            return None
        f, d1, d2 = self.lack_of_fit
        return float(f_dist.sf(f, d1, d2))

    def rho_mean(self) -> float:
        return float(self.prob @ self.rho)

    def cell_variance(self, n: np.ndarray) -> np.ndarray:
        """Noise variance of one new cell at n (times φ), from the trend."""
        return self.trend.var(n)

    def samples(self, seed: int = 0, count: int = SAMPLES) -> tuple[np.ndarray, ...]:
        """(D_ref, α, C) drawn from the posterior, D_ref >= 0 and C >= 0."""
        rng = np.random.default_rng(seed)
        k = rng.choice(self.alpha.size, size=count, p=self.prob)
        chol = np.linalg.cholesky(self.cov[k] + 1e-300 * np.eye(2))
        z = rng.standard_normal((count, 2))
        t = np.sqrt(self.dof / rng.chisquare(self.dof, count))
        draw = self.beta[k] + np.einsum("kij,kj->ki", chol, z) * t[:, None]
        keep = (draw[:, 0] >= 0) & (draw[:, 1] >= 0)
        if keep.sum() < count // 20:  # the bounds contradict the data: keep the unbounded draws
            keep[:] = True
        return draw[keep, 0], self.alpha[k[keep]], draw[keep, 1]

    def predict(self, n: float, seed: int = 0) -> np.ndarray:
        """Posterior draws of E(n)."""
        d, a, c = self.samples(seed)
        return d * (n / self.n_ref) ** -a + c


def _gls(x: np.ndarray, y: np.ndarray, m: np.ndarray):
    """GLS of y on (x, 1) for every row of x (A, N) under precision m: (β, XᵀMX, SSE)."""
    one = np.ones_like(y)
    mx, m1, my = x @ m, m @ one, m @ y
    sxx, sx1, s11 = np.einsum("an,an->a", mx, x), mx @ one, one @ m1
    sxy, s1y, syy = mx @ y, one @ my, y @ my
    det = sxx * s11 - sx1 * sx1
    d = (s11 * sxy - sx1 * s1y) / det
    c = (sxx * s1y - sx1 * sxy) / det
    sse = np.maximum(syy - d * sxy - c * s1y, 1e-300)
    info = np.stack([np.stack([sxx, sx1], -1), np.stack([sx1, np.full_like(sxx, s11)], -1)], -2)
    return np.stack([d, c], -1), info, sse, det


def _free_sse(cells: Cells, m: np.ndarray) -> float:
    """GLS SSE with a free mean per size (the law's rival in the lack-of-fit test)."""
    sizes = np.unique(cells.n)
    z = (cells.n[:, None] == sizes[None, :]).astype(float)
    a = z.T @ m @ z
    b = z.T @ m @ cells.y
    return float(max(cells.y @ m @ cells.y - b @ np.linalg.solve(a, b), 1e-300))


def posterior(data: Groups | pd.DataFrame) -> Posterior:
    """The (α, ρ)-grid posterior of the law given the cells (>= 3 sizes).

    data: a table of cells (n, mae, and repetition: without it the cells are independent), or
    Groups (whose repetitions, when present, say which cells share a split).
    """
    groups = data if isinstance(data, Groups) else group_repetitions(data)
    if groups.size_count < 3:
        raise ValueError("a posterior of D·n^-α + C needs at least 3 sizes")
    cells = Cells.of(groups)
    sd_size, trend, within = noise_sd(groups)
    sd = sd_size[np.searchsorted(groups.n, cells.n)]
    same = cells.same_repetition
    rho_grid = RHO if same.any() else RHO[:1]
    n_cells = cells.y.size
    dof = float(max(n_cells - 2, 1))  # the misfit's exponent once (D, C) and φ are integrated
    # what the GLS misfit is expected to be at the true law (φ = 1): the within-size part as
    # the fitted noise shape leaves it (noise_sd), and S - 3 between the size means
    resid_dof = float(max(within + groups.size_count - 3, 1)) if within else dof - 1
    t_dof = interval_dof(resid_dof, trend.log_var_variance(float(groups.n.max())))
    n_ref = float(groups.n.min())
    x = np.exp(-ALPHA[:, None] * np.log(cells.n / n_ref)[None, :])  # (A, N)
    precision, log_p, beta, info, sse = [], [], [], [], []
    for rho in rho_grid:
        cov = correlation(same, rho) * np.outer(sd, sd)
        m = np.linalg.inv(cov)
        m = (m + m.T) / 2
        b, i, s, det = _gls(x, cells.y, m)
        logdet = np.linalg.slogdet(cov)[1]
        precision.append(m)
        log_p.append(-0.5 * logdet - 0.5 * np.log(det) - 0.5 * dof * np.log(s))
        beta.append(b)
        info.append(i)
        sse.append(s)
    lp = np.stack(log_p, 1).ravel()  # (A·P,), α major
    keep = np.flatnonzero(lp >= lp.max() + np.log(PRUNE))
    prob = np.exp(lp[keep] - lp.max())
    prob /= prob.sum()
    a_idx, p_idx = np.divmod(keep, rho_grid.size)
    beta_k = np.stack(beta, 1).reshape(-1, 2)[keep]
    info_k = np.stack(info, 1).reshape(-1, 2, 2)[keep]
    phi = np.stack(sse, 1).ravel()[keep] / resid_dof
    cov_k = np.linalg.inv(info_k) * phi[:, None, None]
    precision = np.stack(precision)
    return Posterior(
        alpha=ALPHA[a_idx],
        rho_index=p_idx,
        prob=prob,
        beta=beta_k,
        cov=cov_k,
        phi=phi,
        dof=t_dof,
        n_ref=n_ref,
        groups=groups,
        cells=cells,
        sd=sd,
        trend=trend,
        rho_grid=rho_grid,
        precision=precision,
        lack_of_fit=_lack_of_fit(cells, groups, np.stack(sse), np.stack(log_p), precision),
    )


def _lack_of_fit(cells: Cells, groups: Groups, sse, log_p, precision):
    """F = ((SSE_law - SSE_free) / (S - 3)) / (SSE_free / (N - S)) at the most probable ρ."""
    s, n_cells = groups.size_count, cells.y.size
    if s <= 3 or n_cells <= s:
        return None
    p = int(np.argmax(np.logaddexp.reduce(log_p, axis=1)))
    law, free = float(sse[p].min()), _free_sse(cells, precision[p])
    f = max(law - free, 0.0) / (s - 3) / (free / (n_cells - s))
    return float(f), s - 3, n_cells - s


def jacobian(post: Posterior, n: np.ndarray) -> np.ndarray:
    """(K, len(n), 3) gradient of the law in (D_ref, α, C) at each kept point, at sizes n."""
    logx = np.log(np.asarray(n, float) / post.n_ref)[None, :]
    x = np.exp(-post.alpha[:, None] * logx)
    return np.stack([x, -post.beta[:, :1] * x * logx, np.ones_like(x)], -1)


def laplace_covariance(post: Posterior) -> np.ndarray:
    """(K, 3, 3) covariance of (D_ref, α, C) linearised at each point's (D_ref, C).

    The 2x2 posterior given α ignores α's own uncertainty, which dominates an extrapolation;
    this local 3-parameter information matrix JᵀΣ⁻¹J/φ (the cells' correlation included) keeps
    it, for scoring what a new cell would buy.
    """
    jac = jacobian(post, post.cells.n)  # (K, N, 3)
    info = np.empty((post.alpha.size, 3, 3))
    for p in np.unique(post.rho_index):
        k = post.rho_index == p
        jk = jac[k]
        info[k] = jk.transpose(0, 2, 1) @ (post.precision[p] @ jk)
    info /= post.phi[:, None, None]
    ridge = 1e-9 * np.trace(info, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    return np.linalg.inv(info + ridge)
