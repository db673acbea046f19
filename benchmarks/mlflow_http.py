"""What MLflow over HTTP costs a trial, against a SQLite file: the tracking calls a fine-tuning
trial makes when each epoch is its own call (its run with params, one batched metrics call per
epoch, the run's end), timed through s2r's own tracking code against each store in turn. A
trial sends its curve every `tracking.CURVE_EVERY_S` seconds instead: these per-call figures
are why.

    python benchmarks/mlflow_http.py [--trials 20] [--epochs 40] [--out FILE.json]

The server is a real `mlflow server` on a free loopback port (one worker, SQLite behind it), so
the difference is the HTTP round trip and the server's handling; on a cluster add the network.
Over HTTP, MLflow also fetches each run as it ends to print its URL; `http_no_url_print` is the
same server with MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true, as `s2r submit` and the SLURM
script set it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from s2r_ray.local_servers import mlflow_server
from s2r_ray.protocol import Cell
from s2r_ray.study import tracking

HP = {"lr": 1e-3, "weight_decay": 1e-5, "epochs": 40, "batch_size": 32, "freeze": 0}
QUIET_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def one_trial(ctx: tracking.TrackingContext, key: str, epochs: int, quiet: bool) -> float:
    """Wall seconds of one trial's tracking calls. Over HTTP, ending a run also fetches it to
    print its URL, unless MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT is set."""
    os.environ[QUIET_URL] = str(quiet).lower()
    start = time.perf_counter()
    with (
        contextlib.redirect_stdout(io.StringIO()),
        tracking.nested_run(ctx, Cell(100, 0), "trial", key, HP) as run,
    ):
        run.every_s = 0.0  # a call per epoch
        for epoch in range(1, epochs + 1):
            run.add({"val_mae": 1 / epoch, "best_val_mae": 1 / epoch}, step=epoch)
    return time.perf_counter() - start


def measure(stores: dict[str, tuple[str, bool]], trials: int, epochs: int) -> dict[str, dict]:
    """Trials interleaved across the stores, so that load on a shared machine hits them alike;
    the first trial of each store is a warm-up."""
    ctxs = {
        name: tracking.start_study(uri, "bench", name, {}, [100], {})
        for name, (uri, _) in stores.items()
    }
    times: dict[str, list[float]] = {name: [] for name in stores}
    for i in range(trials + 1):
        for name, (_, quiet) in stores.items():
            times[name].append(one_trial(ctxs[name], f"t{i}", epochs, quiet))
    calls = epochs + 3  # create the run, its params, one per epoch, its end
    return {
        name: {
            "per_trial_ms": round(1000 * statistics.median(t[1:]), 1),
            "per_call_ms": round(1000 * statistics.median(t[1:]) / calls, 2),
        }
        for name, t in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp) / "server") as uri:
        stores = {
            "sqlite": (f"sqlite:///{tmp}/mlruns.db", False),
            "http": (uri, False),
            "http_no_url_print": (uri, True),
        }
        result = {"trials": args.trials, "epochs": args.epochs}
        result |= measure(stores, args.trials, args.epochs)
    for name in ("http", "http_no_url_print"):
        extra = result[name]["per_trial_ms"] - result["sqlite"]["per_trial_ms"]
        result[name]["extra_per_trial_ms_vs_sqlite"] = round(extra, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
