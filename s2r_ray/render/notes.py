"""What a reviewer reads in the MLflow UI: run names, the markdown notes of the study, size runs
and experiment, and links into the UI; pure (no MLflow import, `tracking.py` writes them).

Links are the UI's hash routes, relative to wherever it is served; they carry
`workflowType=machine_learning` or MLflow 3.17's UI opens an experiment on its GenAI overview.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlencode

from s2r_ray.protocol import size_key
from s2r_ray.render.format import (
    decision_phrase,
    extrapolation_phrase,
    fit_sentence,
    fmt,
    goal_interval,
    in_units,
    interval,
    price_phrases,
    target_phrase,
)

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
STUDY_RUN_TAG = "s2r.study_run"  # on every run of a study: the study run's id
SELECTED_TAG = "s2r.selected"  # "true" on the trial each cell's scoring rebuilt and tested
NEWEST_STUDIES = 20  # rows of the experiment's studies table
EXPERIMENT_NOTE_START = "**Studies, one row each:**"  # marks the experiment note as s2r's


def cell_label(n: int, m: int | None, repetition: int) -> str:
    """A cell as a person names it: "n=300 r1", "n=300 m=70 r1", "baseline r0"."""
    return f"{size_key(n)}{'' if m is None else f' m={m}'} r{repetition}"


def size_run_name(study: str, n: int) -> str:
    return f"{study} · {size_key(n)}"


def run_name(kind: str, n: int, m: int | None, repetition: int, key: str) -> str:
    """A trial is "n=300 r1 trial 03" (its key ends in -t03); a pretraining "pretrain n=300 r1"."""
    where = cell_label(n, m, repetition)
    return f"{where} trial {key.rsplit('-t', 1)[-1]}" if kind == "trial" else f"{kind} {where}"


def _tag(key: str) -> str:
    return f"tags.`{key}`"


def study_filter(
    study_run_id: str, kind: str | None = None, n: int | None = None, status: str | None = None
) -> str:
    """MLflow search string for the runs of one study (optionally one kind, size, status)."""
    parts = [f"{_tag(STUDY_RUN_TAG)} = '{study_run_id}'"]
    parts += [f"{_tag('s2r.kind')} = '{kind}'"] if kind else []
    parts += [f"{_tag('s2r.n')} = '{n}'"] if n is not None else []
    parts += [f"attributes.status = '{status}'"] if status else []
    return " and ".join(parts)


STUDIES_FILTER = f"{_tag('s2r.kind')} = 'study'"


def run_path(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def artifact_path(experiment_id: str, run_id: str, name: str) -> str:
    """The run's Artifacts tab with one file open (an image shows as a preview)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(name)}"


def runs_path(
    experiment_id: str, search: str | None = None, order_by: str | None = None, asc: bool = False
) -> str:
    """The runs list, filtered and ordered; oldest first puts a study run above its size runs
    and their trials."""
    query = {"workflowType": "machine_learning"}
    query |= {"searchFilter": search} if search else {}
    query |= {"orderByKey": order_by, "orderByAsc": str(asc).lower()} if order_by else {}
    return f"#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def study_tree_path(experiment_id: str, study_run_id: str) -> str:
    """The study as one row: its runs, oldest first, nested study > size > trial."""
    return runs_path(experiment_id, study_filter(study_run_id), "attributes.start_time", asc=True)


def reviewer_lines(uri: str, experiment_id: str, study_run_id: str) -> list[str]:
    """The links `s2r run` and `s2r report` print: full URLs for a tracking server, else the
    `mlflow ui` command and the URLs it will serve."""
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else LOCAL_UI
    how = base if served else f"mlflow ui --backend-store-uri {shlex.quote(uri)}, then open"
    return [
        f"MLflow UI: {how}",
        f"  study run:            {base}/{run_path(experiment_id, study_run_id)}",
        f"  its runs as one tree: {base}/{study_tree_path(experiment_id, study_run_id)}",
        f"  every study, one row: {base}/{runs_path(experiment_id, STUDIES_FILTER)}",
    ]


def _link(text: str, path: str) -> str:
    return f"[{text}]({path})"


def headline(report: dict) -> str:
    """One line for the experiment's studies table: state, fit, best size."""
    fit, progress = report.get("fit") or {}, report.get("progress") or {}
    parts = [str(report.get("status", "running"))]
    if progress.get("cells_planned"):
        parts.append(f"{progress.get('cells_done', 0)}/{progress['cells_planned']} cells")
    if fit.get("alpha") is not None:
        parts.append(f"α {fmt(fit['alpha'], 3)} {interval(fit.get('alpha_ci90'), 3)}")
    sizes = [s for s in report.get("sizes", []) if s.get("test_mae_mean") is not None]
    if sizes:
        best = min(sizes, key=lambda s: s["test_mae_mean"])
        parts.append(f"best MAE {fmt(best['test_mae_mean'])} at {size_key(best['n'])}")
    return " · ".join(parts)


def steering_note(report: dict) -> list[str]:
    """A steered study's goal, decisions and stop, for the study run's description."""
    st = report.get("steering")
    if not st:
        return []
    stop = st["stop_reason"] or "not yet"
    lines = [
        "**Steering**",
        "",
        f"Goal {st['goal']} = {goal_interval(st.get('goal_interval'))}, asked width "
        f"{fmt(st['precision'])}; stop: {stop}.",
        "",
        *[f"{d['index']}. {decision_phrase(d)}" for d in st["decisions"]],
        "",
        *[f"- {p}" for p in price_phrases(st, report)],
        "",
    ]
    return lines


def study_note(report: dict, experiment_id: str, study_run_id: str, plots: list[str]) -> str:
    """The study run's description: what the study found, then where to look further. `plots`
    are artifacts of the study run, shown inline by a relative URL (works wherever served)."""
    e, s, target = experiment_id, study_run_id, report.get("n_for_target")
    ahead = [f"- {extrapolation_phrase(report, x)}" for x in report.get("extrapolation") or []]
    ahead += [f"- {target_phrase(target)}"] if target else []
    refs = ", ".join(f"{k} {fmt(v)}" for k, v in (report.get("references") or {}).items())
    plot_links = [_link(p, artifact_path(e, s, p)) for p in plots]
    links = [
        _link("its runs as one tree", study_tree_path(e, s)),
        _link("sizes", runs_path(e, study_filter(s, "size"))),
        _link(
            "selected trials",
            runs_path(e, f"{study_filter(s, 'trial')} and {_tag(SELECTED_TAG)} = 'true'"),
        ),
        _link("failed trials", runs_path(e, study_filter(s, "trial", status="FAILED"))),
        _link("pretraining", runs_path(e, study_filter(s, "pretrain"))),
    ]
    entries = ([report["baseline"]] if report.get("baseline") else []) + report.get("sizes", [])
    has_m = any(x.get("m") is not None for x in entries)
    m_head, m_rule = (" m |", "---:|") if has_m else ("", "")
    table = [f"| n |{m_head} repetitions | test MAE | 90% interval | gain vs n=0 |"]
    table.append(f"|---:|{m_rule}---:|---:|---|---:|")
    for x in entries:
        gain = (x.get("paired_gain") or {}).get("mean")
        m = f" {fmt(x.get('m'))} |" if has_m else ""
        table.append(
            f"| {size_key(x.get('n', 0))} |{m} {x.get('repetitions', 0)} |"
            f" {fmt(x.get('test_mae_mean'))} | {interval(x.get('test_mae_ci90'))} | {fmt(gain)} |"
        )
    lines = [
        f"**{report.get('study')}** ({report.get('status')}): test MAE{in_units(report)} of "
        f"{report.get('property') or 'the target'} against the number n of simulated rows.",
        "",
        f"**Fit:** {fit_sentence(report)}.",
        "",
        *([f"**Plots:** {' · '.join(plot_links)}", ""] if plots else []),
        *table,
        "",
        *([f"References: {refs}.", ""] if refs else []),
        "**Extrapolation**",
        "",
        *(ahead or ["- none: it needs a fit."]),
        "",
        *steering_note(report),
        "**Verdict**",
        "",
        *[f"- {d.get('message')}" for d in report.get("diagnostics") or []],
        "",
        "**Runs:** " + " · ".join(links),
        "",
        *[f"![{p}](get-artifact?path={quote(p)}&run_uuid={s})" for p in plots],
    ]
    return "\n".join(lines).strip() + "\n"


def size_note(
    study: str,
    n: int,
    entry: dict,
    records: list[dict],
    experiment_id: str,
    study_run_id: str,
    selected: dict[str, str],
) -> str:
    """A size run's description: its summary and one row per cell, each with the trial its
    scoring selected (`selected`: trial key -> run id) linked."""
    gain = entry.get("paired_gain") or {}
    lines = [
        f"**{size_run_name(study, n)}**: test MAE {fmt(entry.get('test_mae_mean'))} "
        f"{interval(entry.get('test_mae_ci90'))} over {entry.get('repetitions', 0)} "
        "repetition(s) (90% interval of the mean).",
        "",
    ]
    if gain:
        lines += [
            f"Gain over no pretraining on the same splits: {fmt(gain.get('mean'))} "
            f"{interval(gain.get('ci90'))}, better in {gain.get('wins')} of "
            f"{gain.get('repetitions')} repetitions.",
            "",
        ]
    if n:
        converged = {True: "converged", False: "stopped at the step cap"}
        lines += [
            f"Pretraining: source hold-out MAE {fmt(entry.get('source_val_mae'))}, "
            f"{converged.get(entry.get('pretrain_converged'), 'convergence unknown')}; "
            f"zero-shot MAE (before fine-tuning) {fmt(entry.get('zero_shot_mae'))}.",
            "",
        ]
    lines += [
        "| cell | test MAE | selected trial | its validation MAE | trials (failed) |",
        "|---|---:|---|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r.get("m") or 0, r["repetition"])):
        label = cell_label(n, r.get("m"), r["repetition"])
        if r.get("status") != "ok":
            error = str(r.get("error", "?")).replace("|", "/").replace("\n", " ")
            lines.append(f"| {label} | failed: {error} | | | |")
            continue
        key = r.get("best_trial", "")
        name = run_name("trial", n, r.get("m"), r["repetition"], key) if key else "–"
        trial = _link(name, run_path(experiment_id, selected[key])) if key in selected else name
        lines.append(
            f"| {label} | {fmt(r.get('mae'))} | {trial} | {fmt(r.get('val_mae'))} |"
            f" {r.get('trials', '–')} ({r.get('failed_trials', 0)}) |"
        )
    e, trials = experiment_id, study_filter(study_run_id, "trial", n)
    links = [
        _link("trials, best first", runs_path(e, trials, "metrics.`best_val_mae`", asc=True)),
        _link("failed trials", runs_path(e, study_filter(study_run_id, "trial", n, "FAILED"))),
        _link("the study", run_path(e, study_run_id)),
    ]
    lines += ["", "**Runs:** " + " · ".join(links)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StudyRow:
    """One study as the experiment's description lists it."""

    name: str
    run_id: str
    start_ms: int
    headline: str


def experiment_note(experiment_id: str, studies: list[StudyRow]) -> str:
    """The experiment's description, above its runs list: its first line (all a collapsed one
    shows) links to the studies view; below, one row per study with its runs as one tree."""
    studies_view = _link("open the studies view", runs_path(experiment_id, STUDIES_FILTER))
    lines = [
        f"{EXPERIMENT_NOTE_START} {studies_view} (newest first; below, the "
        f"{NEWEST_STUDIES} newest).",
        "",
        "| study | started | state | runs |",
        "|---|---|---|---|",
    ]
    for s in studies:
        started = datetime.fromtimestamp(s.start_ms / 1000).strftime("%Y-%m-%d %H:%M")
        lines.append(
            f"| {_link(s.name, run_path(experiment_id, s.run_id))} | {started} | {s.headline} |"
            f" {_link('as one tree', study_tree_path(experiment_id, s.run_id))} |"
        )
    return "\n".join(lines) + "\n"
