"""The terminal's views: the report as `s2r run`/`s2r report`/`s2r fit` print it, and the pieces
of the driver's live log (one line per finished cell, the size and fit at each completed size).
"""

from __future__ import annotations

from s2r_ray.protocol import size_key
from s2r_ray.render.format import (
    decision_phrase,
    extrapolation_phrase,
    fit_sentence,
    fmt,
    goal_interval,
    interval,
    price_phrases,
    target_phrase,
    units,
)


def fit_line(report: dict) -> str:
    """The current fit and its first extrapolation, for the live log and `s2r status`."""
    ext = (report.get("extrapolation") or [None])[0]
    at = f"; {extrapolation_phrase(report, ext)}" if ext and ext.get("mae") is not None else ""
    return f"fit: {fit_sentence(report)}{at}"


def size_line(entry: dict) -> str:
    """A completed size's mean test MAE and its interval, as the live log prints it."""
    if entry.get("test_mae_mean") is None:
        return "no finished repetition"
    return f"MAE {fmt(entry['test_mae_mean'])} {interval(entry.get('test_mae_ci90'))}"


def cell_line(record: dict, records: list[dict], done: int, total: int) -> str:
    """A finished cell as the live log prints it, with the best cell so far at its m (only
    cells with as many experimental rows compare); `records` include this one."""
    m = record.get("m")
    where = f"[{done}/{total} cells] {size_key(record['n'])}{'' if m is None else f' m={m}'}"
    where += f" r{record['repetition']}"
    if record["status"] != "ok":
        return f"{where}: FAILED ({record['error']})"
    same_m = [r for r in records if r.get("status") == "ok" and r.get("m") == m]
    best = min(same_m, key=lambda r: r["mae"], default=None)
    at = "" if m is None else f" at m={m}"
    if best is not None and best["cell"] != record["cell"]:
        at += f": {fmt(best['mae'])}, {size_key(best['n'])} r{best['repetition']}"
    return f"{where}: test MAE {fmt(record['mae'])} (best so far{at})"


def decision_line(d: dict) -> str:
    """A steering decision as the live log prints it, with the goal's interval it was taken at."""
    now = f"{d['goal']} now {goal_interval(d.get('before'))}"
    return f"steering #{d['index']} ({now}): {decision_phrase(d)}"


def steering_lines(report: dict) -> list[str]:
    """A steered study's goal, decisions, stop and prices, for `s2r report`."""
    st = report.get("steering")
    if not st:
        return []
    stop = st["stop_reason"] or "still running"
    budget = st["budget"]
    lines = [
        f"  steering: {st['goal']} = {goal_interval(st.get('goal_interval'))}, asked width "
        f"{fmt(st['precision'])}; stop: {stop}; {budget['cells_used']} (n, repetition) pairs, "
        f"{fmt(budget['spent_seconds'], 3)} s of compute",
    ]
    lines += [f"    #{d['index']} {decision_phrase(d)}" for d in st["decisions"]]
    lines += [f"  {p}" for p in price_phrases(st, report)]
    return lines


def summary_text(report: dict) -> str:
    """The report as a person reads it in a terminal."""
    by_m = report.get("baseline_by_m")  # the study varies m: a block of sizes n per m
    lines = [
        f"study {report.get('study')} ({report.get('status')}): test MAE{units(report)} by "
        "source size n",
        (f"  {'m':>5}" if by_m else "")
        + f"  {'n':>9} {'reps':>5} {'MAE':>9} {'90% CI':>21} {'gain vs n=0':>12}",
    ]
    rows = by_m or ([report["baseline"]] if report.get("baseline") else [])
    rows = [*rows, *report.get("sizes", [])]
    if by_m:
        rows.sort(key=lambda s: (s["m"], s["n"]))
    for s in rows:
        gain = (s.get("paired_gain") or {}).get("mean")
        lines.append(
            (f"  {fmt(s['m']):>5}" if by_m else "")
            + f"  {s.get('n', 0):>9} {s.get('repetitions', 0):>5} "
            f"{fmt(s.get('test_mae_mean')):>9} {interval(s.get('test_mae_ci90')):>21} "
            f"{fmt(gain):>12}"
        )
    lines += [f"  reference {k}: {fmt(v)}" for k, v in (report.get("references") or {}).items()]
    if (report.get("fit") or {}).get("C") is not None:  # else the notes below say why not
        lines.append(f"  fit: {fit_sentence(report)}")
    lines += [f"  {extrapolation_phrase(report, e)}" for e in report.get("extrapolation") or []]
    if report.get("n_for_target"):
        lines.append(f"  {target_phrase(report['n_for_target'])}")
    axis, eq = report.get("target_axis"), report.get("equivalent_samples")
    if axis:  # the target-size axis: the gap C at each m, E0(m), the equivalent sample sizes
        gaps = ", ".join(
            f"m = {fmt(e['m'])}: {fmt(e['C'], 3)} {interval(e.get('C_ci90'), 3)}"
            for e in axis["scaling_in_n"]
            if e.get("C") is not None
        )
        lines.append(f"  transfer gap C by m, 90% CI: {gaps}")
    if eq:
        b = eq["baseline_curve"]
        lines.append(
            f"  no pretraining: E0(m) = {fmt(b['D0'])} m^-{fmt(b['beta'], 3)} + {fmt(b['C0'])}"
            f", fitted on m = {', '.join(fmt(m) for m in b['m_used'])}"
        )
        lines.append(
            f"  equivalent experimental sample size at m = {fmt(eq['m_ref'])} (90% CI; an m "
            f"above {fmt(b['m_used'][-1])} extrapolates E0):"
        )
        for p in eq["points"]:  # what n simulated rows are worth in experimental rows
            n = fmt(p["n"])
            lines.append(
                f"  at n = {n}: below the fitted floor C0 of E0(m): no m on that curve matches it"
                if p["m_eq"] == "unreachable"
                else f"  at n = {n}: one simulated row is worth {fmt(p['worth_per_row'], 2)} "
                f"{interval(p.get('worth_per_row_ci90'), 2)} experimental rows (no pretraining "
                f"needs m = {fmt(p['m_eq'], 3)} {interval(p.get('m_eq_ci90'), 3)})"
            )
    lines += steering_lines(report)
    lines += [f"  note: {d.get('message')}" for d in report.get("diagnostics") or []]
    return "\n".join(lines)
