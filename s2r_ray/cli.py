"""`s2r`: run a scaling study, re-render its report, or fit a table of results."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import shlex
import sys
from pathlib import Path

from s2r_ray import shipped
from s2r_ray.config import UserError, config_file, load_config
from s2r_ray.render.text import summary_text

DESCRIPTION = """\
Sim2Real scaling studies. For each source size n, a model is pretrained on n simulated
(computed) rows and fine-tuned on the experimental train split, with its hyperparameters tuned
per size and repetition; the experimental test MAE is then fitted as E(n) = D n^-alpha + C.
alpha says how fast more simulation helps, C is the transfer gap that no amount of it closes.
"""


def mlflow_lines(out: Path) -> list[str]:
    """Where a reviewer opens the study in MLflow, from the ids its folder keeps."""
    from s2r_ray.folder import StudyFolder
    from s2r_ray.render.notes import reviewer_lines

    ids = StudyFolder(out).state().get("mlflow")
    return reviewer_lines(ids["uri"], ids["experiment_id"], ids["study_run_id"]) if ids else []


def _cmd_run(args: argparse.Namespace) -> int:
    from s2r_ray.api import run_study
    from s2r_ray.study.driver import StudyInterrupted

    cfg = load_config(args.config, args.set, quick=args.quick)
    # The interpreter's last collection of what a study leaves (torch's, Ray's, MLflow's
    # objects) took 1.4-1.9 s of the demo's exit; frozen, the process ends in ~0.2 s.
    atexit.register(gc.freeze)
    if not Path(args.config).is_file():  # a name: say which file it is
        print(f"shipped config {args.config}: {config_file(args.config)}", flush=True)
    out = Path(args.out or Path("runs") / cfg.name)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    try:
        study = run_study(cfg, out, address=args.address, fresh=args.fresh, echo=echo)
    except StudyInterrupted as e:
        if e.report:
            print(summary_text(e.report))
        print(f"s2r: {e}; the study folder {out} keeps everything done so far.", file=sys.stderr)
        words = ["s2r", "run", args.config, "--out", str(out)]  # the same, pointed at its folder
        words += [w for s in args.set for w in ("--set", s)]
        words += ["--quick"] * args.quick + (["--address", args.address] if args.address else [])
        print(f"resume with: {shlex.join(words)}", file=sys.stderr, flush=True)
        return 128 + e.signum
    print(summary_text(study.report))
    print(f"report: {study.folder.report_path()}  plot: {study.plots.get('scaling')}")
    print("\n".join(mlflow_lines(out)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from s2r_ray.api import open_study

    study = open_study(args.dir)
    print(summary_text(study.rebuild_report()))
    print("\n".join(mlflow_lines(study.path)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from s2r_ray.api import open_study
    from s2r_ray.status import status_text

    print(status_text(open_study(args.dir).folder))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from s2r_ray.api import fit_table

    report = fit_table(
        args.table, target_mae=args.target_mae, n_boot=args.n_boot, seed=args.seed, out=args.out
    )
    print(summary_text(report))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from s2r_ray.study import submit

    cfg = load_config(args.config, args.set, quick=args.quick)  # a bad config stays here
    workdir = Path.cwd()
    # a shipped config's name stays a name: the job's s2r has the same configs
    named = not Path(args.config).is_file()
    config = args.config if named else submit.shipped_path(args.config, workdir)
    words = submit.run_command(config, args.out, args.set, quick=args.quick, fresh=args.fresh)
    pip = submit.requirement(args.requirement, workdir)
    client = submit.connect(args.address)
    for note in submit.placement_notes(args.out, cfg.tracking.uri):
        print(note)
    print(submit.shipping_line(workdir, pip), flush=True)
    job = submit.submit(client, words, workdir, cfg.name, pip)
    print(f"submitted study {cfg.name} as job {job} to {client.get_address()}")
    where = f" --address {args.address}" if args.address else ""
    for command in (f"logs {job} --follow", f"status {job}", f"stop {job}"):
        print(f"  s2r jobs {command}{where}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from s2r_ray.starter import write_starter

    print("\n".join(write_starter(args.name, args.source).lines))
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from s2r_ray.study import submit

    client = submit.connect(args.address)
    if args.action == "list":
        for job in submit.list_jobs(client):
            print(submit.describe(job))
    elif args.action == "status":
        job = submit.info(client, args.id)
        print(f"{args.id}: {job.status.value}" + (f" ({job.message})" if job.message else ""))
    elif args.action == "logs":
        submit.logs(client, args.id, args.follow, lambda text: print(text, end="", flush=True))
    else:
        stopped = submit.stop(client, args.id)
        print(f"{args.id}: {'stop requested' if stopped else 'already ended'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2r", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a scaling study from a YAML config",
        description="Run a study, or resume it: the same command on the same --out picks "
        "it up where it stopped. Prints one line per finished cell and the fit.",
    )
    run.add_argument(
        "config",
        help="study config: a YAML file, or the name of a shipped one "
        f"({', '.join(shipped.names())})",
    )
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
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over in a folder that holds a study (the old one is moved to "
        "<out>/superseded/, not deleted); without it, the same command resumes",
    )
    run.set_defaults(func=_cmd_run)

    init = sub.add_parser(
        "init",
        help="write a commented config to start a study from",
        description="Copy a shipped config, or the template for your own tables, into a file "
        "here to edit; never overwrites one. Prints what to run next.",
    )
    init.add_argument(
        "name",
        nargs="?",
        help="the study's name: writes NAME.yaml (or NAME itself when it ends in .yaml); "
        "default my_<source>",
    )
    init.add_argument(
        "--from",
        dest="source",
        default="demo",
        metavar="SOURCE",
        help="a shipped config or 'tables' (the template for your own computed and measured "
        "tables); default demo",
    )
    init.set_defaults(func=_cmd_init)

    rep = sub.add_parser(
        "report",
        help="re-render report.json, report.html and plots of a study folder",
        description="Rebuild the report of a finished or running study from its "
        "cell ledger (cells.jsonl) and print it.",
    )
    rep.add_argument("dir", help="the study's output folder, e.g. runs/demo")
    rep.set_defaults(func=_cmd_report)

    status = sub.add_parser(
        "status",
        help="where a running or finished study stands",
        description="From the study folder alone (no Ray needed): cells finished and planned "
        "per size, failed cells, time so far, rate and ETA, and the current fit.",
    )
    status.add_argument("dir", help="the study's output folder, e.g. runs/demo")
    status.set_defaults(func=_cmd_status)

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

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument(
        "--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    )
    submit = sub.add_parser(
        "submit",
        parents=[cluster],
        help="run a study on a Ray cluster as a Ray job",
        description="Validate the config here, then submit `s2r run` as a Ray job that ships "
        "this directory (less .gitignore'd files, .venv, runs/, MLflow stores) with "
        "MLFLOW_TRACKING_URI and S2R_DATA_DIR when set, and installs s2r-ray on the cluster "
        "unless this directory is a checkout of it. Prints what it ships and the job id.",
    )
    submit.add_argument("config", help="study config inside this directory, or a shipped name")
    submit.add_argument(
        "--requirement",
        metavar="REQ",
        help="what the job pip-installs s2r-ray from: a requirement ('s2r-ray==0.1.0', "
        "'s2r-ray @ git+https://...'), a .whl inside this directory, or 'none' when the "
        "nodes have it (default: the version installed here; none from a checkout)",
    )
    submit.add_argument("--out", help="study folder on the head; give an absolute path")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--quick", action="store_true", help="the config's 'quick' grid")
    submit.add_argument("--fresh", action="store_true", help="as for s2r run: start over")
    submit.set_defaults(func=_cmd_submit)

    jobs = sub.add_parser(
        "jobs", help="list, inspect, follow or stop the cluster's jobs", description="Ray jobs."
    )
    actions = jobs.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[cluster], help="every job, oldest first")
    for name, what in (
        ("status", "a job's status"),
        ("logs", "a job's output so far (or, with --follow, until it ends)"),
        ("stop", "stop a job"),
    ):
        action = actions.add_parser(name, parents=[cluster], help=what)
        action.add_argument("id", help="the job id s2r submit printed")
        if name == "logs":
            action.add_argument("--follow", action="store_true", help="until the job ends")
    jobs.set_defaults(func=_cmd_jobs)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:  # the user's to fix: one line naming what; anything else is ours
        print(f"s2r: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
