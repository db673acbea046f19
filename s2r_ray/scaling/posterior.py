"""An exact posterior of E(n) = D·n^-α + C on a grid of α, cheap enough to refit at every step.

Given α the law is linear in (D, C), so weighted least squares (powerlaw.solve_dc's problem,
without the sign bounds) gives their conditional mean and covariance in closed form, and the
marginal likelihood of α follows. The noise scale is not taken as known: the weights come from
the spread over repetitions (noise_weights) with ν = Σ(R - 1) degrees of freedom, and a
scale factor φ on them has a scaled-inverse-χ² prior with those ν degrees of freedom. The misfit
of the law then widens the intervals instead of being ignored, and (D, C) given α is Student-t.
Samples respect D >= 0 and C >= 0 by rejection, which is exact for the truncated posterior.
Used by steering, which needs the goal's interval and how one more observation would shrink it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import digamma
from scipy.stats import chi2 as chi2_dist

from s2r_ray.scaling.groups import Groups, fit_weights

# flat prior on α over (0, 2.5]: wider than any α a Sim2Real curve has shown (science.md: 0.01
# to 0.5), and fine enough that neighbouring grid points give nearly the same curve
ALPHA = np.linspace(0.005, 2.5, 300)
SAMPLES = 4000
TREND_DOF = 20.0


@dataclass(frozen=True)
class Posterior:
    """Posterior over α (grid, probabilities) with (D_ref, C) given α; D_ref is D at n_ref."""

    alpha: np.ndarray
    prob: np.ndarray
    beta: np.ndarray  # (A, 2): D_ref, C
    cov: np.ndarray  # (A, 2, 2): covariance of (D_ref, C) given α, scale φ̂ included
    phi: np.ndarray  # (A,): posterior scale of the weights' noise
    dof: float  # Student-t degrees of freedom of (D_ref, C) given α
    n_ref: float
    groups: Groups
    weights: np.ndarray
    chi2: float  # the best α's χ² under the repetition noise alone
    fit_dof: int

    @property
    def law_p_value(self) -> float | None:
        """P(χ² this large | the law holds); None without a noise estimate or spare sizes."""
        nu = float(np.sum(np.maximum(self.groups.counts - 1, 0)))
        if self.fit_dof < 1 or nu == 0:
            return None
        return float(chi2_dist.sf(self.chi2, self.fit_dof))

    def cell_variance(self, n: np.ndarray) -> np.ndarray:
        """Variance of one new cell at n: each size's R/w, interpolated in log n."""
        per_cell = self.groups.counts / self.weights
        return np.exp(np.interp(np.log(n), np.log(self.groups.n), np.log(per_cell)))

    def samples(self, seed: int = 0, count: int = SAMPLES) -> tuple[np.ndarray, ...]:
        """(D_ref, α, C) drawn from the posterior, D_ref >= 0 and C >= 0."""
        rng = np.random.default_rng(seed)
        k = rng.choice(self.alpha.size, size=count, p=self.prob)
        chol = np.linalg.cholesky(self.cov[k] + 1e-300 * np.eye(2))
        z = rng.standard_normal((count, 2))
        t = np.sqrt(self.dof / rng.chisquare(self.dof, count)) if np.isfinite(self.dof) else 1.0
        draw = self.beta[k] + np.einsum("kij,kj->ki", chol, z) * np.reshape(t, (-1, 1))
        keep = (draw[:, 0] >= 0) & (draw[:, 1] >= 0)
        if keep.sum() < count // 20:  # the bounds contradict the data: keep the unbounded draws
            keep[:] = True
        return draw[keep, 0], self.alpha[k[keep]], draw[keep, 1]

    def predict(self, n: float, seed: int = 0) -> np.ndarray:
        """Posterior draws of E(n)."""
        d, a, c = self.samples(seed)
        return d * (n / self.n_ref) ** -a + c


def noise_weights(groups: Groups) -> np.ndarray:
    """Inverse variance of each size mean, the per-cell variance smooth in n: ln s² = a + b ln n.

    A size with 2 repetitions estimates its variance with 1 degree of freedom; fit_weights
    floors such noisy estimates at the pooled variance, which over-weights nothing but, when the
    noise shrinks with n, under-weights exactly the large sizes an extrapolation rests on. The
    log-linear trend pools every size's degrees of freedom instead (ln s² regressed on ln n,
    weighted by dof, each ln s² corrected for its bias ψ(k/2) - ln(k/2)). With fewer than 3
    sizes that have repetitions, fit_weights decides. Each size's own variance then shrinks to
    the trend as to a prior worth TREND_DOF degrees of freedom, so a noise that is not
    log-linear in n (convex: the trend would understate it at the ends) is still followed.
    """
    k = np.maximum(groups.counts - 1, 0)
    has = k > 0
    if has.sum() < 3:
        return fit_weights(groups.var_mean, groups.counts)[0]
    ss = np.nansum((groups.values - groups.means[:, None]) ** 2, axis=1)
    s2 = ss[has] / k[has]
    if np.any(s2 <= 0):
        return fit_weights(groups.var_mean, groups.counts)[0]
    ln_s2 = np.log(s2) - (digamma(k[has] / 2) - np.log(k[has] / 2))
    slope, level = np.polyfit(np.log(groups.n[has]), ln_s2, 1, w=np.sqrt(k[has]))
    trend = np.exp(level + slope * np.log(groups.n))
    own = np.where(k > 0, ss / np.maximum(k, 1), trend)
    var = (k * own + TREND_DOF * trend) / (k + TREND_DOF)
    return groups.counts / var


def posterior(groups: Groups) -> Posterior:
    """The α-grid posterior of the law given each size's repetitions (>= 3 sizes)."""
    if groups.size_count < 3:
        raise ValueError("a posterior of D·n^-α + C needs at least 3 sizes")
    w = noise_weights(groups)
    n_ref = float(groups.n.min())
    x = np.exp(-ALPHA[:, None] * np.log(groups.n / n_ref)[None, :])  # (A, S)
    y = groups.means
    sw, sy, syy = w.sum(), (w * y).sum(), (w * y * y).sum()
    sx, sxx, sxy = x @ w, (x * x) @ w, x @ (w * y)
    det = sw * sxx - sx * sx
    d = (sw * sxy - sx * sy) / det
    c = (sxx * sy - sx * sxy) / det
    sse = np.maximum(syy - d * sxy - c * sy, 0.0)
    nu = float(np.sum(np.maximum(groups.counts - 1, 0)))
    s = groups.size_count
    if nu > 0:  # φ ~ scaled-inv-χ²(ν, 1), integrated out
        dof = nu + s - 2
        phi = (nu + sse) / dof
        log_p = -0.5 * np.log(det) - 0.5 * dof * np.log(nu + sse)
    else:  # single repetitions: the residuals alone estimate the noise
        dof = max(s - 2, 1)
        phi = np.maximum(sse, 1e-300) / dof
        log_p = -0.5 * np.log(det) - 0.5 * dof * np.log(np.maximum(sse, 1e-300))
    prob = np.exp(log_p - log_p.max())
    prob /= prob.sum()
    sw_a = np.full_like(sx, sw)
    cov = np.stack([np.stack([sw_a, -sx], -1), np.stack([-sx, sxx], -1)], -2) / det[:, None, None]
    return Posterior(
        alpha=ALPHA,
        prob=prob,
        beta=np.stack([d, c], -1),
        cov=cov * phi[:, None, None],
        phi=phi,
        dof=float(dof),
        n_ref=n_ref,
        groups=groups,
        weights=w,
        chi2=float(sse.min()),
        fit_dof=s - 3,
    )


def laplace_covariance(post: Posterior) -> np.ndarray:
    """(A, 3, 3) covariance of (D_ref, α, C) linearised at each grid α's (D_ref, C).

    The 2x2 posterior given α ignores α's own uncertainty, which dominates an extrapolation;
    this local 3-parameter information matrix keeps it, for scoring what a new cell would buy.
    """
    g = post.groups
    logx = np.log(g.n / post.n_ref)[None, :]
    x = np.exp(-post.alpha[:, None] * logx)
    jac = np.stack([x, -post.beta[:, :1] * x * logx, np.ones_like(x)], -1)  # (A, S, 3)
    info = np.einsum("asi,s,asj->aij", jac, post.weights, jac) / post.phi[:, None, None]
    ridge = 1e-9 * np.trace(info, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    return np.linalg.inv(info + ridge)
