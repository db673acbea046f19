"""Wall time of a study and the share of it spent in training code (the rest is orchestration).

    python benchmarks/study_overhead.py [CONFIG] [--set key=value ...]

Runs the study into a temporary folder with its own MLflow store and prints report.json's timing
block: trials, pretrainings, seconds inside trial training, pretraining and scoring, and
`training_fraction` = those seconds / (wall time x parallel trial slots).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from s2r_ray.config import load_config
from s2r_ray.study.driver import run_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, args.set)
        cfg.tracking.uri = f"sqlite:///{tmp}/mlruns.db"
        start = time.time()
        report = run_study(cfg, Path(tmp) / "out", echo=lambda line: None)
        print(f"{args.config}: {time.time() - start:.1f} s end to end (incl. Ray start-up)")
        print(json.dumps(report["timing"], indent=2))
        sizes = [(s["n"], round(s["test_mae_mean"], 4)) for s in report["sizes"]]
        print("baseline", round(report["baseline"]["test_mae_mean"], 4), "sizes", sizes)


if __name__ == "__main__":
    main()
