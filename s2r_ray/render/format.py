"""The formats every view shares (a number, an interval, the fitted law in words), so each view
prints a value the same way. A value not computed is None ("–"); a word ("unreachable") stays.
"""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "–"


def fmt(x: object, digits: int = 4) -> str:
    """A number as a person reads it: `digits` significant digits, sizes with separators
    (85,600 rather than 8.56e+04), a flag as yes/no, a word as itself, None as "–"."""
    if x is None:
        return MISSING
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{float(f'{x:.{digits}g}'):,.0f}"
    return f"{x:.{digits}g}"


def interval(ci: Sequence | None, digits: int = 4) -> str:
    """'[lo, hi]', the one way an interval is printed; '[–]' when there is none (a single
    repetition, no bootstrap). A bound may be a word ('unreachable')."""
    if not ci or all(v is None for v in ci):
        return f"[{MISSING}]"
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def fit_sentence(report: dict) -> str:
    """The fitted law with the intervals of α and C, or why there is none yet, as every view
    words it. D only scales the curve, so its interval (in report.json) is left out."""
    fit = report.get("fit") or {}
    if fit.get("C") is None:
        why = next(
            (d["message"] for d in report.get("diagnostics") or [] if d["code"] == "too_few_sizes"),
            "the finished sizes do not support a fit yet",
        )
        return f"none yet: {why}"
    alpha = (
        f"α = {fmt(fit['alpha'], 3)} {interval(fit.get('alpha_ci90'), 3)}"
        if fit.get("alpha") is not None
        else "α not identified (flat)"
    )
    return (
        f"E(n) = D·n^−α + C with D = {fmt(fit.get('D'))}, "
        f"{alpha}, C = {fmt(fit['C'])} {interval(fit.get('C_ci90'))}{units(report)} "
        "(90% intervals)"
    )


def extrapolation_phrase(report: dict, e: dict) -> str:
    """One entry of report["extrapolation"]: the law's prediction beyond the largest n."""
    return (
        f"at {e['factor']:g}× the largest n (n = {fmt(e['n'])}): MAE {fmt(e.get('mae'))} "
        f"{interval(e.get('mae_ci90'))}{units(report)}"
    )


def target_phrase(target: dict) -> str:
    """report["n_for_target"]: how many simulated rows reach the target MAE, if any do."""
    n = target.get("n")
    reach = (
        "unreachable: C is at or above it"
        if n == "unreachable"
        else f"n ≈ {fmt(n, 3)} {interval(target.get('n_ci90'), 3)}"
    )
    return f"Simulated rows needed for a target MAE of {fmt(target.get('target'))}: {reach}"


def headline_sizes(report: dict) -> list[dict]:
    """The transfer sizes at the fit's m (all of them when m does not vary)."""
    m = (report.get("fit") or {}).get("m")
    return [s for s in report.get("sizes") or [] if m is None or s.get("m") == m]


def units(report: dict) -> str:
    """' eV' after a number; '' for a study without units."""
    return f" {report['units']}" if report.get("units") else ""


def in_units(report: dict) -> str:
    """' (eV)' after a quantity's name; '' for a study without units."""
    return f" ({report['units']})" if report.get("units") else ""


def goal_interval(iv: dict | None) -> str:
    """A steering goal's interval: 'point [lo, hi] (width w)', or '–' before 3 sizes."""
    if not iv:
        return MISSING
    return f"{fmt(iv['point'])} {interval((iv['lo'], iv['hi']))} (width {fmt(iv['width'], 3)})"


def decision_phrase(d: dict) -> str:
    """One steering decision as every view words it."""
    if d["action"] == "stop":
        return f"stop ({d['stop_reason']}): {d['reason']}"
    new = "new size " if d.get("new_size") else ""
    first = d["first_repetition"]
    reps = f"r{first}" if d["repetitions"] == 1 else f"r{first}-r{first + d['repetitions'] - 1}"
    after = f"; predicted after: {goal_interval(d['after'])}" if d.get("after") else ""
    cost = f"~{fmt(d['cost_seconds'], 3)} s"
    return f"measure {new}n={fmt(d['n'])} {reps} ({cost}): {d['reason']}{after}"


def _estimate(summary: dict) -> str:
    """A pricing summary ({point, ci90}) as 'point [lo, hi]', 3 significant digits."""
    return f"{fmt(summary['point'], 3)} {interval(summary['ci90'], 3)}"


def price_phrases(steering: dict, report: dict) -> list[str]:
    """The target's price and the database's value, from report['steering']."""
    out = []
    if price := steering.get("price"):
        out.append(
            f"MAE {fmt(price['target_mae'])}{units(report)} needs n = "
            f"{_estimate(price['rows_needed'])} rows: {_estimate(price['rows_to_simulate'])} "
            f"beyond the {fmt(steering['pool_rows'])} in the pool; confirming it there takes "
            f"~{fmt(price['confirm_seconds']['point'], 3)} s of compute for "
            f"{price['confirm_repetitions']} repetitions"
        )
    if value := steering.get("database_value"):
        out.append(
            f"the pool's next rows: +10% changes the MAE by {_estimate(value['per_10_percent'])}"
            f", +10,000 rows by {_estimate(value['per_10000_rows'])}{units(report)}"
        )
        if rows := value.get("in_experimental_rows"):
            r10, r1e4 = rows["per_10_percent"], rows["per_10000_rows"]
            out.append(
                "in experimental rows: the MAE is below the no-pretraining curve's floor C0, so "
                "no number of experimental rows alone matches it"
                if r10["point"] is None
                else f"in experimental rows (at the largest m, on the no-pretraining curve): +10% "
                f"of the pool is worth {_estimate(r10)}, +10,000 rows {_estimate(r1e4)}"
            )
    return out
