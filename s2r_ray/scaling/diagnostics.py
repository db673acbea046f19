"""Diagnostics: what a reader must know before trusting a number, in words.

Each is {code, message}: the code is stable (tests and the report key on it), the message says
what was seen and what it means for the extrapolation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np

from s2r_ray.scaling.powerlaw import ALPHA_MAX, ALPHA_MIN

RISING_T = 2.0  # slope of MAE vs log n this many standard errors above 0 is "rising"
# α is not identified when its interval is wider than half the allowed range, or spans more
# than a factor of 10 (science.md's band-gap curve: α = 0.03 with an interval up to 0.5)
UNIDENTIFIED_WIDTH = 0.5 * ALPHA_MAX
UNIDENTIFIED_RATIO = 10.0


class Diagnostic(TypedDict):
    code: str
    message: str


def note(code: str, message: str) -> Diagnostic:
    return {"code": code, "message": message}


def _g(x: float) -> str:
    return f"{x:.3g}"


def too_few_sizes(count: int) -> Diagnostic:
    return note(
        "too_few_sizes",
        f"{count} size(s) with finished repetitions; fitting D·n^-α + C needs at least 3, "
        "so there is no fit, extrapolation or backtest yet",
    )


def dropped_rows(count: int, why: str) -> Diagnostic:
    return note("non_finite_dropped", f"{count} row(s) dropped: {why}")


def missing_repetitions(
    n: np.ndarray, counts: np.ndarray, planned: int | Mapping[int, int]
) -> list[Diagnostic]:
    """Sizes short of their planned repetitions (one number, or per size in a steered study)."""
    pairs = [(int(s), int(c)) for s, c in zip(n, counts, strict=True)]
    want = {s: planned.get(s, c) if isinstance(planned, Mapping) else planned for s, c in pairs}
    short = [(s, c, want[s]) for s, c in pairs if c < want[s]]
    if not short:
        return []
    sizes = ", ".join(f"n={s} ({c}/{w})" for s, c, w in short)
    return [
        note(
            "missing_repetitions",
            f"fewer finished repetitions than planned at {sizes}: those means are noisier "
            "and the intervals are wider than a complete study would give",
        )
    ]


def single_repetition(intervals: bool) -> Diagnostic:
    how = (
        "its intervals come from the scatter about the fitted curve, which assumes the "
        "curve's form is right"
        if intervals
        else "with only 3 sizes the curve passes through every point, so there is no noise "
        "estimate and no intervals"
    )
    return note(
        "single_repetition", f"every size has a single repetition: the fit is unweighted and {how}"
    )


def parameter_checks(
    D_at_min: float,
    alpha: float,
    C: float,
    alpha_ci: tuple[float, float] | None,
    C_ci: tuple[float, float] | None,
    scale: float,
) -> list[Diagnostic]:
    """Whether α is identified at all; if it is, bounds and C against zero."""
    out: list[Diagnostic] = []
    tiny = 1e-9 * max(scale, 1e-300)
    if D_at_min <= tiny:
        return [
            note(
                "alpha_not_identified",
                "the best fit is flat (D = 0): the errors show no decrease with n, so α has no "
                "meaning here and the extrapolation is just the mean error",
            )
        ]
    if alpha_ci is not None and (
        alpha_ci[1] - alpha_ci[0] > UNIDENTIFIED_WIDTH
        or alpha_ci[1] > UNIDENTIFIED_RATIO * alpha_ci[0]
    ):
        return [
            note(
                "alpha_not_identified",
                f"α = {_g(alpha)} but its interval [{_g(alpha_ci[0])}, {_g(alpha_ci[1])}] is too "
                "wide to mean anything: the curve is too flat against the noise to say how fast "
                "the error falls. C trades off against α (a near-zero α turns D·n^-α into a "
                "constant), so C is not determined either; do not quote α or C or extrapolate far",
            )
        ]
    if alpha <= ALPHA_MIN * 1.01 or alpha >= ALPHA_MAX * 0.999:
        out.append(
            note(
                "alpha_at_bound",
                f"α = {_g(alpha)} sits at the edge of the allowed range ({ALPHA_MIN:g}, "
                f"{ALPHA_MAX:g}]: the data push it further, so the form fits poorly",
            )
        )
    if tiny >= C:
        out.append(
            note(
                "C_at_bound",
                "C = 0 (its lower bound): the sizes show no levelling off, so the extrapolation "
                "assumes the error keeps falling as a pure power law",
            )
        )
    elif C_ci is not None and C_ci[0] <= tiny:
        out.append(
            note(
                "C_indistinguishable_from_zero",
                f"C = {_g(C)} but its interval reaches 0: the data cannot tell a transfer gap from "
                "none, so treat C as an upper bound",
            )
        )
    return out


def rising_curve(
    n: np.ndarray, means: np.ndarray, w: np.ndarray, weighted: bool
) -> list[Diagnostic]:
    """Weighted slope of the mean MAE against log10 n, tested against its standard error.

    With inverse-variance weights the scatter about the line may only widen the error (never
    narrow it below the repetition noise); without them the scatter is the only noise estimate.
    """
    x = np.log10(n)
    xm = (w * x).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    slope = (w * (x - xm) * means).sum() / sxx
    resid = means - (w * means).sum() / w.sum() - slope * (x - xm)
    scatter = (w * resid**2).sum() / max(n.size - 2, 1)
    se = float(np.sqrt((max(1.0, scatter) if weighted else scatter) / sxx))
    if slope <= 0 or (se > 0 and slope / se <= RISING_T):
        return []
    beyond = "with no scatter at all" if se == 0 else f"{slope / se:.1f} standard errors"
    return [
        note(
            "rising_curve",
            f"the error rises with n ({_g(slope)} per decade of n, {beyond}): more simulated data "
            "made the transfer worse; check pretraining (convergence, negative transfer) before "
            "reading any fit",
        )
    ]


def baseline_rows_ignored(count: int) -> Diagnostic:
    return note(
        "baseline_rows_ignored",
        f"{count} row(s) with n <= 0 (no pretraining) are not part of the fit in n; the report "
        "compares them as the baseline",
    )


def poor_fit(chi2: float, dof: int) -> Diagnostic:
    return note(
        "poor_fit",
        f"the curve misses the size means by more than the repetition noise allows "
        f"(χ² = {chi2:.3g} on {dof} degrees of freedom): the form may be wrong; see "
        "alternatives and backtest",
    )


def paper_form_disfavoured(rival: dict, paper_aicc: float) -> Diagnostic:
    return note(
        "paper_form_disfavoured",
        f"'{rival['form']}' fits better (AICc lower by {paper_aicc - rival['aicc']:.1f}) and "
        f"extrapolated better (mean backtest error {rival['backtest_rel_error']:.1%} against "
        f"{rival['paper_backtest_rel_error']:.1%}): the intervals reported are the paper "
        "form's, so prefer that form's point extrapolation in 'alternatives'",
    )


def target_unreachable(target: float, C: float) -> Diagnostic:
    return note(
        "target_unreachable",
        f"the target MAE {target:.3g} is at or below the fitted floor C = {C:.3g}: more "
        "simulated data alone is not expected to reach it",
    )


def no_target_axis() -> Diagnostic:
    return note(
        "no_target_axis",
        "the study uses one experimental training size m, so there is no error-vs-m curve and "
        "no equivalent experimental sample size (that needs baseline rows, n = 0, at several m)",
    )


def no_equivalent_samples(found: int) -> Diagnostic:
    return note(
        "no_equivalent_samples",
        "the equivalent experimental sample size needs the baseline (n = 0) at 3 or more "
        f"target sizes m to fit its learning curve; it has {found}",
    )


def pretrain_not_converged(sizes: list[int]) -> Diagnostic:
    return note(
        "pretrain_not_converged",
        "pretraining stopped on the step cap rather than converging at "
        + ", ".join(f"n={n}" for n in sizes)
        + ": those sizes measure a compute limit, not a data limit, and flatten the curve",
    )


def no_baseline() -> Diagnostic:
    return note(
        "no_baseline",
        "no finished baseline (n = 0, no pretraining) cells: paired gains are unavailable",
    )


def gain_not_detectable() -> Diagnostic:
    return note(
        "gain_not_detectable",
        "no size's paired gain over the baseline has an interval excluding 0: with these "
        "repetitions the benefit of pretraining is within the split-to-split noise",
    )


def negative_transfer(sizes: list[int]) -> Diagnostic:
    return note(
        "negative_transfer",
        "pretraining made the error detectably worse at " + ", ".join(f"n={n}" for n in sizes),
    )


def failed_cells(failed: list[tuple[str, str]]) -> Diagnostic:
    """Cells whose trials, pretraining or scoring all failed: the fit uses the others."""
    shown = "; ".join(f"{cell}: {error}" for cell, error in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    return note(
        "failed_cells",
        f"{len(failed)} cell(s) failed and are left out of every mean and fit ({shown}{more})",
    )
