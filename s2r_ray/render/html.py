"""report.html: the whole study in one self-contained page a scientist can mail, from the report
dict and the files beside it (plots, config.yaml, rejected_rows.csv). Plots are inline base64 PNG,
the style is inline, no script, nothing fetched: it opens offline and prints. All text is escaped.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from s2r_ray import __version__
from s2r_ray.progress import fmt_duration
from s2r_ray.protocol import size_key
from s2r_ray.render.format import (
    extrapolation_phrase,
    fit_sentence,
    fmt,
    goal_interval,
    headline_sizes,
    in_units,
    interval,
    price_phrases,
    target_phrase,
    units,
)

EXAMPLES_PER_REASON = 3
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1d232b;background:#f5f6f8;margin:0}
main{max-width:1040px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;
 border-bottom:2px solid #e3e6ea;padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.sub{color:#56606b;margin:0 0 16px}.badge{display:inline-block;padding:1px 8px;border-radius:9px;
 font-size:13px;font-weight:600;background:#e3e6ea}.complete{background:#d5f0dc;color:#14532d}
.running{background:#fff1c2;color:#6b4d00}.failed,.interrupted{background:#fbd5d5;color:#7f1d1d}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:12px;
 margin:16px 0}.card{border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px}
.card .k{font-size:13px;color:#56606b}.card .v{font-size:22px;font-weight:600}
.card .ci{font-size:13px;color:#56606b}
ul.found li{margin:4px 0}figure{margin:16px 0}figure img{max-width:100%;height:auto;
 border:1px solid #e3e6ea}figcaption{font-size:13px;color:#56606b}
table{border-collapse:collapse;margin:8px 0;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 9px;border-bottom:1px solid #e3e6ea;text-align:right;vertical-align:top}
td{white-space:nowrap}.scroll{overflow-x:auto}
th{background:#f0f2f5}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafbfc}
.note{border-left:4px solid #e0a800;background:#fffaeb;padding:6px 12px;margin:6px 0}
.note code{color:#6b4d00}pre{background:#f0f2f5;padding:12px;overflow-x:auto;font-size:12.5px;
 columns:3 260px;column-rule:1px solid #dde1e6}
.muted{color:#56606b;font-size:13px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A table whose first `left` columns are text (left-aligned) and the rest numbers; no
    header row when `headers` is empty. Scrolls sideways rather than squeezing its numbers."""

    def cells(tag: str, row: Sequence[object]) -> str:
        return "".join(
            f"<{tag}{' class=l' if i < left else ''}>{_e(v)}</{tag}>" for i, v in enumerate(row)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head = f"<thead><tr>{cells('th', headers)}</tr></thead>" if headers else ""
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _image(path: Path | None, alt: str, caption: str) -> str:
    if path is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


# -- the answer, in numbers and words ---------------------------------------------------------


def _cards(report: dict) -> str:
    """The headline numbers, each with its interval."""
    fit, u = report.get("fit") or {}, in_units(report)
    cards: list[tuple[str, object, Sequence | None]] = []
    if fit.get("C") is not None:
        codes = {d["code"] for d in report.get("diagnostics", [])}
        what = "not identified" if "alpha_not_identified" in codes else "how fast simulation helps"
        cards.append((f"α ({what})", fit.get("alpha"), fit.get("alpha_ci90")))
        cards.append((f"C, the transfer gap{u}", fit["C"], fit.get("C_ci90")))
    # the largest transfer size at the fit's m: where the measured gain is best seen
    largest, base = (headline_sizes(report) or [None])[-1], report.get("baseline")
    if largest:
        label = f"test MAE at n = {fmt(largest['n'])}{u}"
        cards.append((label, largest["test_mae_mean"], largest.get("test_mae_ci90")))
    if base and base.get("test_mae_mean") is not None:
        label = f"test MAE without pretraining{u}"
        cards.append((label, base["test_mae_mean"], base.get("test_mae_ci90")))
    ext = (report.get("extrapolation") or [None])[0]
    if ext and ext.get("mae") is not None:
        label = f"predicted MAE at n = {fmt(ext['n'], 3)}{u}"
        cards.append((label, ext["mae"], ext.get("mae_ci90")))
    html_cards = "".join(
        f'<div class="card"><div class="k">{_e(label)}</div><div class="v">'
        f'{_e(fmt(value, 3))}</div><div class="ci">{_e(interval(bounds, 3))}</div></div>'
        for label, value, bounds in cards
    )
    return f'<div class="cards">{html_cards}</div>' if cards else ""


def _cut(alpha: float) -> str:
    """How much of the error above C a tenfold increase of n removes, as a percentage."""
    return f"{100 * (1 - 10**-alpha):.0f}%"


def _law_words(report: dict) -> list[str]:
    """The fitted law and what α and C mean for the reader's next simulation, as far as the
    diagnostics let them say anything."""
    fit = report.get("fit") or {}
    if fit.get("C") is None:
        return [f"Fitted law: {fit_sentence(report)}"]
    used, u, C = fit["sizes_used"], units(report), fmt(fit["C"])
    codes = {d["code"] for d in report.get("diagnostics", [])}
    where = f" at m = {fmt(fit['m'])} experimental training rows" if fit.get("m") else ""
    law = (
        f"Fitted law: {fit_sentence(report)}, bootstrap over repetitions, from {len(used)} "
        f"sizes n = {fmt(min(used))} … {fmt(max(used))}{where}."
    )
    alpha, bounds = fit.get("alpha"), fit.get("alpha_ci90")
    if alpha is None:
        return [
            law,
            "The curve is flat: within the noise, more simulated rows do not change the error, "
            f"which stays at C = {C}{u}",
        ]
    if "alpha_not_identified" in codes:
        return [
            law,
            "What α and C mean here: nothing firm yet. The errors do not fall clearly enough "
            "against their noise to say how fast more simulation helps or where the error "
            "levels off (see the notes): do not quote α or C, or extrapolate far.",
        ]
    span = f" (between {_cut(bounds[0])} and {_cut(bounds[1])})" if bounds else ""
    edge = " α sits at the edge of its allowed range: the form fits poorly."
    edge = edge if "alpha_at_bound" in codes else ""
    if "C_at_bound" in codes:
        gap = (
            "What C means: C = 0 here, no levelling off is seen yet, so the law assumes the "
            "error keeps falling as a pure power law; the transfer gap is not measured."
        )
    elif "C_indistinguishable_from_zero" in codes:
        gap = (
            f"What C means: the error would level off at C = {C}{u}, the transfer gap that no "
            "number of simulated rows closes, but its interval reaches 0: the data cannot tell "
            "a gap from none, so read C as an upper bound."
        )
    else:
        gap = (
            f"What C means: the error levels off at C = {C}{u}, the transfer gap between this "
            "simulation and experiment that no number of simulated rows closes."
        )
    return [
        law,
        f"What α means: each tenfold increase in simulated rows cuts the part of the error "
        f"above C by {_cut(alpha)}{span}.{edge}",
        gap,
    ]


def _findings(report: dict) -> list[str]:
    """Measured gain, predictions, target and references: one sentence each."""
    u, out = units(report), []
    largest, base = (headline_sizes(report) or [None])[-1], report.get("baseline")
    if largest and largest.get("test_mae_mean") is not None:
        text = (
            f"Measured: at the largest size n = {fmt(largest['n'])}, test MAE "
            f"{fmt(largest['test_mae_mean'])} {interval(largest.get('test_mae_ci90'))}{u}"
        )
        gain = largest.get("paired_gain")
        if base and base.get("test_mae_mean") is not None and gain:
            text += (
                f", against {fmt(base['test_mae_mean'])} {interval(base.get('test_mae_ci90'))} "
                f"without pretraining: pretraining lowers it by {fmt(gain['mean'])} "
                f"{interval(gain.get('ci90'))} on the same splits, better in {gain['wins']} of "
                f"{gain['repetitions']} repetitions"
            )
        out.append(text)
    ext = [e for e in report.get("extrapolation") or [] if e.get("mae") is not None]
    out += [f"Predicted {extrapolation_phrase(report, e)}" for e in ext]
    if report.get("n_for_target"):
        out.append(target_phrase(report["n_for_target"]))
    for name, mae in (report.get("references") or {}).items():
        what = (
            "Simulation alone (the computed value used directly as the prediction, on the "
            "same test rows)"
            if name == "simulation_alone"
            else f"Reference {name} (from the config)"
        )
        out.append(f"{what}: MAE {fmt(mae)}{u}")
    eq = report.get("equivalent_samples")
    if eq and eq.get("points"):
        out.append(_worth_words(eq))
    return out


def _worth_words(eq: dict) -> str:
    """The largest n's equivalent experimental sample size in words: where no number of
    experimental rows gets the baseline there, the sentence says so instead of a number."""
    p = eq["points"][-1]
    head = (
        f"Worth in experiments: at n = {fmt(p['n'])}, pretraining with m = {fmt(eq['m_ref'])} "
        "experimental rows"
    )
    if p["m_eq"] == "unreachable":
        return (
            f"{head} is more accurate than the baseline can get with any number of experimental "
            f"rows: E0(m) levels off at C0 = {fmt(eq['baseline_curve']['C0'])}, above this MAE "
            f"({fmt(p['mae'])})"
        )
    lo, hi = p.get("m_eq_ci90") or (None, None)
    if hi != "unreachable":
        bounds = interval(p.get("m_eq_ci90"), 3)
    elif lo != "unreachable":
        bounds = (
            f"(90% interval: {fmt(lo, 3)} rows or more, and at its upper end no number of "
            "experimental rows gets there)"
        )
    else:
        bounds = "(though in most resamples no number of experimental rows gets there)"
    beyond = ", beyond the measured m: an extrapolation" if p["extrapolated"] else ""
    return (
        f"{head} is as accurate as the baseline with {fmt(p['m_eq'], 3)} rows {bounds}, "
        f"{fmt(p['gain_factor'], 3)}× as many{beyond}; one simulated row is worth "
        f"{fmt(p['worth_per_row'], 2)} {interval(p.get('worth_per_row_ci90'), 2)} experimental rows"
    )


def _answer(report: dict) -> str:
    # a sentence whose units end in a period ("a.u.") needs no second one
    items = [_e(t if t.endswith(".") else f"{t}.") for t in _law_words(report) + _findings(report)]
    notes = len(report.get("diagnostics") or [])
    if notes:
        items.append(f'{notes} note(s) qualify these numbers: see <a href="#notes">Notes</a>.')
    return _cards(report) + '<ul class="found">' + "".join(f"<li>{t}</li>" for t in items) + "</ul>"


# -- tables --------------------------------------------------------------------------------


def _size_rows(report: dict) -> tuple[list[str], list[list[object]]]:
    has_m = any("m" in s for s in report.get("sizes") or [])
    base = report.get("baseline_by_m") or ([report["baseline"]] if report.get("baseline") else [])
    headers = ["size", *(["m"] if has_m else []), "reps", f"test MAE{in_units(report)}", "90% CI"]
    headers += ["RMSE", "gain vs n=0", "gain 90% CI", "wins", "zero-shot MAE"]
    headers += ["source hold-out MAE", "pretraining converged", "trials"]
    rows = []
    for s in [*base, *(report.get("sizes") or [])]:
        g, gain, planned = s.get, s.get("paired_gain") or {}, s.get("planned_repetitions")
        row = [size_key(s["n"]), *([fmt(g("m"))] if has_m else [])]
        row += [f"{s['repetitions']}/{planned}" if planned else s["repetitions"]]
        row += [fmt(g("test_mae_mean")), interval(g("test_mae_ci90")), fmt(g("test_rmse_mean"))]
        row += [fmt(gain.get("mean")), interval(gain.get("ci90"))]
        row += [f"{gain['wins']}/{gain['repetitions']}" if gain else "–"]
        row += [fmt(g(k)) for k in ("zero_shot_mae", "source_val_mae", "pretrain_converged")]
        rows.append([*row, fmt(g("trials"), 3)])
    return headers, rows


def _backtest(report: dict) -> str:
    rows = []
    for e in report.get("backtest") or []:
        for p in e["points"]:
            nums = map(fmt, (e["n_fit_max"], p["n"], p["mae"], p["predicted"]))
            rows.append([e["k"], *nums, f"{100 * p['rel_error']:+.1f}%"])
    if not rows:
        return '<p class="muted">The backtest needs at least 4 sizes.</p>'
    headers = ["sizes fitted", "up to n", "held-out n", "measured", "predicted", "error"]
    return _table(headers, rows, left=0)


def _alternatives(report: dict) -> str:
    rows = []
    for a in report.get("alternatives") or []:
        form = a["form"] + (" (headline)" if a.get("headline") else "")
        err = a.get("backtest_rel_error")
        err, best = "–" if err is None else f"{100 * err:.1f}%", fmt(a.get("best_extrapolating"))
        rows.append([form, a["n_params"], fmt(a.get("delta_aicc"), 3), err, best])
    if not rows:
        return ""
    headers = ["form", "parameters", "ΔAICc", "backtest error", "best extrapolating"]
    return "<h3>Other forms fitted to the same points</h3>" + _table(headers, rows)


def _target_axis(report: dict, plots: dict[str, Path]) -> str:
    axis = report.get("target_axis")
    if not axis:
        return ""
    rows = []
    for e in axis["scaling_in_n"]:
        alpha = [fmt(e.get("alpha"), 3), interval(e.get("alpha_ci90"), 3)]
        used = ", ".join(fmt(n) for n in e.get("sizes_used") or [])
        rows.append([fmt(e["m"]), *alpha, fmt(e.get("C")), interval(e.get("C_ci90")), used])
    body = _image(
        plots.get("target_axis"),
        "E(n) at each m and E(m) with and without pretraining",
        "Left: test MAE against n at each number m of experimental training rows, with each "
        "m's fitted law. Right: test MAE against m at each n; n = 0 (dashed) is no pretraining.",
    )
    body += "<h3>E(n) per experimental training size m</h3>"
    body += _table(["m", "α", "α 90% CI", "C", "C 90% CI", "sizes used"], rows, left=0)
    eq = report.get("equivalent_samples")
    body += "<h3>Equivalent experimental sample size</h3>"
    if not eq:
        body += '<p class="muted">Needs baseline cells (n = 0) at 3 or more m.</p>'
        return body
    body += (
        f"<p>How many experimental rows the baseline (no pretraining) would need to match the "
        f"pretrained model trained on m = {_e(fmt(eq['m_ref']))} rows.</p>"
    )
    rows = []
    for p in eq["points"]:
        m_eq = [fmt(p["m_eq"], 3), interval(p.get("m_eq_ci90"), 3), fmt(p["gain_factor"], 3)]
        rows.append([fmt(p["n"]), fmt(p["mae"]), *m_eq, fmt(p["extrapolated"])])
    headers = ["n", "MAE", "equivalent m", "90% CI", "× m", "extrapolated"]
    return body + _table(headers, rows, left=0)


def _rejected(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    if rows.empty:
        return "<h3>Rejected rows</h3><p>None: every input row was used.</p>"
    by = rows.groupby(["side", "reason"], sort=True).size().reset_index(name="rows")
    examples = rows.groupby("reason", sort=True).head(EXAMPLES_PER_REASON)
    return (
        f"<h3>Rejected rows ({len(rows):,})</h3>"
        + _table(["side", "reason", "rows"], by.itertuples(index=False), left=2)
        + f"<p class=muted>A few examples (all of them are in {_e(path.name)}):</p>"
        + _table(
            ["reason", "side", "file", "row", "column", "value"],
            (
                [r.reason, r.side, Path(r.file).name, r.row, r.column, r.value]
                for r in examples.itertuples(index=False)
            ),
            left=6,
        )
    )


TIMING_LABELS = {
    "wall_seconds": "wall time",
    "trial_train_seconds": "training inside trials",
    "pretrain_seconds": "pretraining",
    "score_seconds": "scoring on the test split",
}


def _timing(report: dict) -> str:
    rows = []
    for key, value in (report.get("timing") or {}).items():
        if key in TIMING_LABELS and value is not None:
            rows.append([TIMING_LABELS[key], fmt_duration(value), f"{value:,.1f} s"])
        elif key == "training_fraction" and value is not None:
            rows.append(["share of wall × slots spent training", f"{100 * value:.0f}%", ""])
        else:
            rows.append([key.replace("_", " "), fmt(value), ""])
    if progress := report.get("progress"):
        rows.append(["cells finished", f"{progress['cells_done']}/{progress['cells_planned']}", ""])
    return _table([], rows) if rows else '<p class="muted">Not recorded yet.</p>'


def _steering(report: dict) -> str:
    """A steered study: its goal now, each decision with the interval before and the one it
    predicted, why it stopped, the cost model, the target's price and the pool's value."""
    st = report["steering"]
    budget = st["budget"]
    asked = [
        f"{fmt(budget[k])} {w}" for k, w in (("seconds", "s"), ("cells", "pairs")) if budget[k]
    ]
    head = (
        f"<p>Goal: <b>{_e(st['goal'])}</b> = {_e(goal_interval(st.get('goal_interval')))}; "
        f"asked: a {st['ci']:.0%} width of at most {fmt(st['precision'])}"
        f"{'; budget ' + _e(', '.join(asked)) if asked else ''}. Used: {budget['cells_used']} "
        f"(n, repetition) pairs, {_e(fmt_duration(budget['spent_seconds']))} of compute. "
        f"Stop: <b>{_e(st['stop_reason'] or 'not yet, the study runs')}</b>.</p>"
    )
    rows = [
        [
            d["index"],
            d.get("when") or "–",
            d["action"],
            fmt(d.get("n")),
            d.get("repetitions") or "–",
            goal_interval(d.get("before")),
            goal_interval(d.get("after")),
            d["reason"],
        ]
        for d in st["decisions"]
    ]
    table = _table(
        ["#", "when (UTC)", "action", "n", "reps", "goal before", "predicted after", "why"],
        rows,
    )
    cost = st["cost_model"]
    points = ", ".join(f"n={fmt(p['n'])}: {fmt(p['seconds_mean'], 3)} s" for p in cost["points"])
    model = (
        f"<p>Seconds per (n, repetition) (pretraining, trials, scoring): {fmt(cost['a'], 3)} + "
        f"{fmt(cost['b'], 3)}·n^{fmt(cost['c'], 3)}, {_e(cost['source'])}"
        f"{'; measured ' + _e(points) if points else ''}.</p>"
    )
    prices = "".join(f"<p>{_e(p)}</p>" for p in price_phrases(st, report))
    return head + table + model + prices


# -- the page ------------------------------------------------------------------------------


def render_html(
    report: dict, plots: dict[str, Path], config: Path | None, rejected: Path | None
) -> str:
    """The page for `report`; `plots` maps a plot's name (scaling, backtest, target_axis) to
    its PNG; config (config.yaml) and rejected (rejected_rows.csv) are shown when present."""
    status = str(report.get("status", ""))
    study, prop = _e(report.get("study", "")), _e(report.get("property") or "test error")
    progress = report.get("progress") or {}
    provisional = (
        ""
        if status == "complete"
        else (
            f'<p class="note">Provisional: the study is {_e(status)} '
            f"({progress.get('cells_done', '?')}/{progress.get('cells_planned', '?')} cells "
            "finished); this page is rewritten as sizes complete.</p>"
        )
    )
    notes = "".join(
        f'<p class="note"><code>{_e(d["code"])}</code> {_e(d["message"])}</p>'
        for d in report.get("diagnostics") or []
    )
    counts = [[k.replace("_", " "), fmt(v)] for k, v in (report.get("counts") or {}).items()]
    config_text = config.read_text() if config is not None and config.is_file() else ""
    mlflow = report.get("mlflow") or {}
    axis = _target_axis(report, plots)
    sections = [
        _section("What the study found", "found", provisional + _answer(report)),
        _section(
            "Scaling plot and paired gain",
            "scaling",
            _image(
                plots.get("scaling"),
                "test MAE against simulated rows n, with the fitted law",
                "Top: mean test MAE over repetitions (black, 90% intervals) against the number n "
                "of simulated rows used for pretraining, the fitted law D·n^−α + C with its 90% "
                "band (blue) and its extrapolation (open circles), the MAE without pretraining "
                "(red line, band: its interval) and references (dashed). Bottom: the paired gain "
                "(MAE without pretraining − MAE with it, on the same splits) per size.",
            ),
        ),
        _section(
            "Backtest: would the law have predicted the larger sizes?",
            "backtest",
            _image(
                plots.get("backtest"),
                "backtest of the law",
                "The law fitted on the first k sizes only, then compared with each larger size "
                "measured later: relative error of the prediction.",
            )
            + _backtest(report)
            + _alternatives(report),
        ),
        *([_section("The experimental axis m", "m-axis", axis)] if axis else []),
        *(
            [_section("Steering: what the study chose to measure", "steering", _steering(report))]
            if report.get("steering")
            else []
        ),
        _section("Per size", "sizes", _table(*_size_rows(report))),
        _section("Notes", "notes", notes or "<p>None.</p>"),
        _section(
            "Data",
            "data",
            (_table(["count", "value"], counts) if counts else "") + _rejected(rejected),
        ),
        _section("Timing", "timing", _timing(report)),
        _section(
            "Config", "config", f"<pre>{_e(config_text)}</pre>" if config_text else "<p>–</p>"
        ),
    ]
    uri, run_id = (_e(mlflow.get(k, "")) for k in ("tracking_uri", "study_run_id"))
    run = f"; MLflow {uri}, study run {run_id}" if mlflow else ""
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    footer = f"<p class=muted>Written {written} by s2r-ray {_e(__version__)}{run}.</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{study}: {prop} scaling study</title><style>{CSS}</style></head><body><main>"
        f"<h1>{study}: how {prop} error scales with simulated data</h1>"
        f'<p class="sub"><span class="badge {_e(status)}">{_e(status)}</span> '
        f"{prop}{_e(in_units(report))}: experimental test error of a model pretrained on n "
        "simulated rows and fine-tuned on experiments.</p>"
        + "".join(sections)
        + footer
        + "</main></body></html>"
    )
