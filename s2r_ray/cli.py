"""`s2r`: run a scaling study, re-render its report, or fit a table of results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from s2r_ray.config import ConfigError, load_config

DESCRIPTION = """\
Sim2Real scaling studies. For each source size n, a model is pretrained on n simulated
(computed) rows and fine-tuned on the experimental train split, with its hyperparameters tuned
per size and repetition; the experimental test MAE is then fitted as E(n) = D n^-alpha + C.
alpha says how fast more simulation helps, C is the transfer gap that no amount of it closes.
"""


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def summary_text(report: dict) -> str:
    """The report as a person reads it in a terminal."""
    units = f" {report['units']}" if report.get("units") else ""
    lines = [
        f"study {report.get('study')} ({report.get('status')}): test MAE{units} by source size n"
    ]
    lines.append(f"  {'n':>9} {'reps':>5} {'MAE':>9} {'90% CI':>21} {'gain vs n=0':>12}")
    rows = [report["baseline"]] if report.get("baseline") else []
    for s in rows + list(report.get("sizes", [])):
        ci = s.get("test_mae_ci90") or [None, None]
        gain = (s.get("paired_gain") or {}).get("mean")
        lines.append(
            f"  {s.get('n', 0):>9} {s.get('repetitions', 0):>5} {_fmt(s.get('test_mae_mean')):>9} "
            f"{'[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']':>21} {_fmt(gain):>12}"
        )
    for name, value in (report.get("references") or {}).items():
        lines.append(f"  reference {name}: {_fmt(value)}")
    fit = report.get("fit") or {}
    if fit.get("C") is not None:
        a, c = fit.get("alpha_ci90") or [None, None], fit.get("C_ci90") or [None, None]
        alpha = _fmt(fit.get("alpha"), 3) if fit.get("alpha") is not None else "(not identified)"
        lines.append(
            f"  fit E(n) = {_fmt(fit['D'])} n^-{alpha} + {_fmt(fit['C'])}"
            f"   alpha 90% CI [{_fmt(a[0], 3)}, {_fmt(a[1], 3)}],"
            f" C 90% CI [{_fmt(c[0])}, {_fmt(c[1])}]"
        )
        for e in report.get("extrapolation") or []:
            ci = e.get("mae_ci90") or [None, None]
            lines.append(
                f"  at {e['factor']:g}x the largest n (n={e['n']:.3g}): MAE {_fmt(e.get('mae'))}"
                f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            )
        target = report.get("n_for_target")
        if target:
            n = target.get("n")
            lines.append(
                f"  n for target MAE {_fmt(target.get('target'))}: "
                f"{_fmt(n) if isinstance(n, float) else n}"
            )
    for d in report.get("diagnostics") or []:
        lines.append(f"  note: {d.get('message')}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    from s2r_ray.sweep import run_study

    cfg = load_config(args.config, args.set, quick=args.quick)
    out = Path(args.out or Path("runs") / cfg.name)
    report = run_study(cfg, out, address=args.address, echo=lambda line: print(line, flush=True))
    print(summary_text(report))
    print(f"report: {out / 'report.json'}  plot: {out / 'scaling.png'}")
    uri = report["mlflow"]["tracking_uri"]
    hint = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    print(f"review trials: {hint}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from s2r_ray.protocol import cell_grid
    from s2r_ray.reducer import read_ledger, report_from_records
    from s2r_ray.report import write_report

    out = Path(args.dir)
    cfg = load_config(out / "config.yaml")
    previous = (
        json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    )
    records = read_ledger(out)
    planned = len(cell_grid(cfg))
    status = "complete" if len(records) >= planned else previous.get("status", "running")
    keep = {k: previous[k] for k in ("counts", "mlflow", "timing", "progress") if k in previous}
    report = report_from_records(cfg, records, status, keep)
    write_report(report, out)
    print(summary_text(report))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from s2r_ray.report import build_report, write_report

    table = pd.read_csv(args.table)
    missing = {"n", "repetition", "mae"} - set(table.columns)
    if missing:
        raise ConfigError(
            f"{args.table}: missing column(s) {sorted(missing)}; need n, repetition, mae"
        )
    report = build_report(
        table,
        study=Path(args.table).stem,
        status="complete",
        target_mae=args.target_mae,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    write_report(report, Path(args.out))
    print(summary_text(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2r", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a scaling study from a YAML config",
        description="Run a study; prints one line per finished cell and the fit.",
    )
    run.add_argument("config", help="study config, e.g. configs/demo.yaml")
    run.add_argument("--out", help="output folder (default runs/<study name>)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by dotted path, e.g. --set repetitions=2 "
        "--set sizes=[100,300,1000] --set tune.resources.gpu=0.25",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="apply the config's own 'quick' section (a coarse grid for a laptop)",
    )
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else local)")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser(
        "report",
        help="re-render report.json and plots of a study folder",
        description="Rebuild the report of a finished or running study from its "
        "cell ledger (cells.jsonl) and print it.",
    )
    rep.add_argument("dir", help="the study's output folder, e.g. runs/demo")
    rep.set_defaults(func=_cmd_report)

    fit = sub.add_parser(
        "fit",
        help="fit the scaling law to a CSV of results",
        description="Fit E(n) = D n^-alpha + C to a table with columns n, "
        "repetition, mae (optionally m; n=0 rows are the baseline).",
    )
    fit.add_argument("table", help="CSV file")
    fit.add_argument("--out", required=True, help="folder for report.json and plots")
    fit.add_argument("--target-mae", type=float, help="report the n needed to reach this MAE")
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=_cmd_fit)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"s2r: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
