"""How busy a study kept its slots: the trial and pretraining runs of an MLflow store laid on one
time axis (each run from its start to its end), read back after the study.

    python benchmarks/unit_timeline.py sqlite:///path/to/mlruns.db [--bin 5]

Prints the units' span, the seconds each kind of run was open (a trial's run includes its
tracking calls and `tune.report`, not only its training), the seconds during which k runs were
open at once, and the mean number open per `--bin` seconds: a study whose first bins read 1.0
on a 2-CPU machine ran one unit at a time (how Tune's actor-start race showed, #18).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from mlflow.tracking import MlflowClient

KINDS = ("trial", "pretrain")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("uri")
    p.add_argument("--bin", type=float, default=5.0)
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    client = MlflowClient(args.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000)
    spans = [
        (r.info.start_time / 1e3, r.info.end_time / 1e3, r.data.tags["s2r.kind"])
        for r in runs
        if r.info.end_time and r.data.tags.get("s2r.kind") in KINDS
    ]
    t0, t1 = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    print(f"units' span: {t1 - t0:.1f} s")
    for kind in KINDS:
        mine = [b - a for a, b, k in spans if k == kind]
        print(f"{kind}: {len(mine)} runs, open {sum(mine):.1f} s")
    ts = np.arange(t0, t1, 0.05)
    open_ = sum(((ts >= a) & (ts < b)).astype(int) for a, b, _ in spans)
    for k in range(int(open_.max()) + 1):
        print(f"{k} open at once: {(open_ == k).mean() * (t1 - t0):.1f} s")
    bins = [open_[(ts >= b) & (ts < b + args.bin)].mean() for b in np.arange(t0, t1, args.bin)]
    print(f"mean open per {args.bin:g} s: " + " ".join(f"{v:.1f}" for v in bins))


if __name__ == "__main__":
    main()
