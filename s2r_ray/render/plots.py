"""Plots drawn from the report dict alone, so `s2r report` can re-render them from report.json.
Object API and Agg canvas (no pyplot state): safe inside a long-running actor. Every panel draws
what there is (no sizes, no fit, no baseline) and says what is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from s2r_ray.atomic import atomic_path
from s2r_ray.render.format import fmt, headline_sizes, in_units, interval
from s2r_ray.scaling import ci_key


def _ci(report: dict) -> float:
    return (report.get("fit") or {}).get("ci") or 0.9


def _errorbar(ax: Axes, x: list, y: list, ci: list, **kw) -> None:
    """Points with asymmetric error bars; entries without an interval get none."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    lo = np.array([y_ - c[0] if c else 0.0 for y_, c in zip(y, ci, strict=True)])
    hi = np.array([c[1] - y_ if c else 0.0 for y_, c in zip(y, ci, strict=True)])
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o", capsize=3, **kw)


def _size_points(ax: Axes, sizes: list[dict], x_key: str = "n", **kw) -> None:
    """Size entries of the report: mean test MAE with its interval, against n or m."""
    means = [s["test_mae_mean"] for s in sizes]
    _errorbar(ax, [s[x_key] for s in sizes], means, [s["test_mae_ci90"] for s in sizes], **kw)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


def _title(report: dict) -> str:
    fit, ci = report.get("fit") or {}, _ci(report)
    if fit.get("C") is None:
        return f"{report.get('study', '')}: no fit yet"

    def part(name: str, label: str) -> str:
        value = "undetermined" if fit[name] is None else fmt(fit[name], 3)
        return f"{label} = {value} {interval(fit.get(ci_key(name, ci)), 3)}"

    title = f"{report.get('study', '')}: {part('alpha', 'α')},  {part('C', 'C')}"
    codes = {d["code"] for d in report.get("diagnostics", [])}
    return title + ("  (α not identified)" if "alpha_not_identified" in codes else "")


def plot_scaling(report: dict, path: Path) -> Path:
    """MAE against n with the fit and its band, baseline, references, target; gains below."""
    fig = Figure(figsize=(7, 6.5))
    ax, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    ci, sizes, curve = _ci(report), headline_sizes(report), report.get("curve")
    xs = {s["n"] for s in sizes} | {e["n"] for e in report.get("extrapolation", [])}
    if len(xs := xs | set(curve["n"] if curve else ())) == 1:  # a log axis has no span for it
        (x,) = xs
        ax.set_xlim(x / 3, x * 3)  # before any artist: autoscaling a single n warns
    if curve:
        ax.plot(curve["n"], curve["mae"], color="C0", label="D·n^-α + C")
        if curve.get("lo"):
            band = f"{ci:.0%} band"
            ax.fill_between(curve["n"], curve["lo"], curve["hi"], color="C0", alpha=0.2, label=band)
    if sizes:
        _size_points(ax, sizes, color="k", label="pretrained + fine-tuned")
        ax.axvline(sizes[-1]["n"], color="0.6", lw=0.8, ls=":")
    for e in report.get("extrapolation", []):
        _errorbar(ax, [e["n"]], [e["mae"]], [e.get(ci_key("mae", ci))], color="C0", mfc="white")
    base = report.get("baseline")
    if base and base.get("test_mae_mean") is not None:
        ax.axhline(base["test_mae_mean"], color="C3", label="no pretraining")
        if base.get("test_mae_ci90"):
            ax.axhspan(*base["test_mae_ci90"], color="C3", alpha=0.12)
    for i, (name, mae) in enumerate(sorted((report.get("references") or {}).items())):
        if mae is not None:
            ax.axhline(mae, color=f"C{4 + i % 5}", ls="--", lw=1, label=name)
    target = (report.get("n_for_target") or {}).get("target")
    if target is not None:
        ax.axhline(target, color="C2", ls=":", lw=1.5, label="target MAE")
    if sizes or curve:
        ax.set_xscale("log")
        ax.set_ylabel(f"test MAE{in_units(report)}")
        _legend(ax)
    else:
        _empty(ax, "no finished sizes yet")
    gains = [s for s in sizes if s.get("paired_gain")]
    bottom.axhline(0, color="0.5", lw=0.8)
    if gains:
        x, g = [s["n"] for s in gains], [s["paired_gain"] for s in gains]
        _errorbar(bottom, x, [e["mean"] for e in g], [e.get(ci_key("", ci)) for e in g], color="C1")
        bottom.set_xscale("log")
        bottom.set_ylabel("paired gain\n(baseline − transfer)")
    else:
        _empty(bottom, "no paired gain (needs baseline cells on the same repetitions)")
    bottom.set_xlabel("simulated rows used for pretraining, n")
    ax.set_title(_title(report), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_backtest(report: dict, path: Path) -> Path:
    """Relative error of the extrapolated MAE at each held-out size, one line per k."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.axhline(0, color="0.5", lw=0.8)
    entries = report.get("backtest") or []
    for e in entries:
        pts, label = e["points"], f"fit on {e['k']} sizes (n ≤ {e['n_fit_max']})"
        ax.plot([p["n"] for p in pts], [100 * p["rel_error"] for p in pts], "o-", label=label)
    if entries:
        ax.set_xscale("log")
        _legend(ax)
    else:
        _empty(ax, "backtest needs at least 4 sizes")
    ax.set_xlabel("held-out n")
    ax.set_ylabel("extrapolated − observed MAE (%)")
    ax.set_title(f"{report.get('study', '')}: backtest of D·n^-α + C", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_target_axis(report: dict, path: Path) -> Path:
    """E(n) at each m, and E(m) at each n with (n > 0) and without (n = 0) pretraining."""
    axis, ci = report["target_axis"], _ci(report)
    rows = report.get("sizes", []) + (report.get("baseline_by_m") or [])
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    panels = (
        (left, axis["scaling_in_n"], "n", "m", "simulated rows n"),
        (right, axis["learning_curves"], "m", "n", "experimental training rows m"),
    )
    for ax, entries, x, by, xlabel in panels:
        for i, entry in enumerate(entries):
            pts = [s for s in rows if s[by] == entry[by] and (by == "n" or s["n"] > 0)]
            if by == "n":
                pts.sort(key=lambda s: s["m"])
            base = by == "n" and entry["n"] == 0  # no pretraining: black, its curve dashed
            color = "k" if base else f"C{i}"
            if not pts:
                continue
            label = "no pretraining" if base else f"{by} = {entry[by]:g}"
            _size_points(ax, pts, x, color=color, label=label)
            if entry.get("C") is not None:  # a flat fit (α undetermined) is the constant C
                xs = np.geomspace(pts[0][x], pts[-1][x], 50)
                flat = entry.get("alpha") is None
                y = np.full_like(xs, entry["C"]) if flat else entry["D"] * xs ** -entry["alpha"]
                ax.plot(xs, y if flat else y + entry["C"], color=color, ls="--" if base else "-")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test MAE")
        _legend(ax)
    left.set_title(f"scaling in n at each m ({ci:.0%} intervals)", fontsize=9)
    right.set_title("error against m, with and without pretraining", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def render_all(report: dict, out_dir: Path) -> list[Path]:
    """scaling.png, backtest.png, and target_axis.png when the study varies m."""
    out_dir = Path(out_dir)
    paths = [
        plot_scaling(report, out_dir / "scaling.png"),
        plot_backtest(report, out_dir / "backtest.png"),
    ]
    if report.get("target_axis"):
        paths.append(plot_target_axis(report, out_dir / "target_axis.png"))
    return paths
