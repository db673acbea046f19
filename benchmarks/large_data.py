"""Peak memory and wall time of a synthetic study on a large source pool (issue #19).

Each study runs in a child process (`--child`) with almost no training (sizes [1000, pool],
one repetition, one trial a cell, `pretrain.max_steps=300`), so what it measures is the data:
generation, the plan in the object store, the pretraining's draw from the pool. While it runs,
this process samples every 0.2 s

  in_use   MemTotal - MemAvailable of the machine, minus its median over 3 s before the start
           (other work on the machine moves it: read it beside `tree`);
  tree     the proportional set size (PSS) of the child and every process below it (Ray's
           raylet, workers, object store pages they map): this study's memory alone.

    PYTHONPATH=. .venv/bin/python benchmarks/large_data.py --rows 100000 1000000 8000000
    PYTHONPATH=. .venv/bin/python benchmarks/large_data.py --rows 8000000 --json out.json

`--base DIR` runs the child with DIR first on PYTHONPATH (an older worktree, to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = float(1 << 30)


def child(rows: int, features: int, out: Path) -> None:
    """One study in this process: its report's timing on stdout."""
    from s2r_ray.config import build_config
    from s2r_ray.study.driver import run_study

    cfg = build_config(
        {
            "name": f"large-{rows}",
            "sizes": [1000, rows - 10_000],
            "repetitions": 1,
            "data": {"synthetic": {"n_source": rows, "n_features": features}},
            "pretrain": {"max_steps": 300},
            "tune": {"trials_per_cell": 1},
            "report": {"n_boot": 50},
            "tracking": {"uri": f"sqlite:///{out}/mlflow.db"},
        }
    )
    report = run_study(cfg, out / "study", echo=lambda line: print(line, file=sys.stderr))
    print(json.dumps(report.get("timing", {})))


def _in_use() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemTotal", "MemAvailable")}
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024


def _tree_pss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def measure(rows: int, features: int, base: str | None) -> dict:
    """Run one child study, sampling memory; its figures with the study's own timing."""
    idle = []
    for _ in range(15):
        idle.append(_in_use())
        time.sleep(0.2)
    idle_bytes = statistics.median(idle)
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    path = [base] if base else []
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", str(rows), str(features), tmp]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peak_in_use = peak_tree = 0
        while proc.poll() is None:
            peak_in_use = max(peak_in_use, _in_use())
            peak_tree = max(peak_tree, _tree_pss(proc.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - start
        out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"study of {rows} rows failed:\n{err.decode()[-3000:]}")
    matrix = rows * features * 4
    return {
        "rows": rows,
        "features": features,
        "code": base or "this",
        "wall_s": round(wall, 1),
        "matrix_gib": round(matrix / GIB, 2),
        "peak_in_use_above_idle_gib": round((peak_in_use - idle_bytes) / GIB, 2),
        "peak_tree_pss_gib": round(peak_tree / GIB, 2),
        "limit_gib": round((3 * matrix + 1.5 * GIB) / GIB, 2),
        "timing": json.loads(out.decode().strip().splitlines()[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--base", help="a worktree whose code the child runs instead")
    parser.add_argument("--json", type=Path, help="append each result as a line here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), Path(args.child[2]))
        return
    print(f"load: {os.getloadavg()}", flush=True)
    for rows in args.rows:
        result = measure(rows, args.features, args.base)
        print(json.dumps(result), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
