"""The demo study (or `--config`'s) end to end on the current code and on a base checkout,
alternately, with the same seeds: wall time, and per (n, m) the test MAE over repetitions with
its 90% interval.

    nice -n 5 .venv/bin/python benchmarks/demo_ab.py --base /work/wt-batch-base [--quick]
        [--config configs/bandgap_mp.yaml] [--set KEY=VALUE ...] [--current-set KEY=VALUE ...]
        [--rounds 1]

`--current-set` applies to the current code's run only (a setting the base does not know, such
as `tune.pack=2`). Each run is `s2r run CONFIG` in its own process (PYTHONPATH = the
checkout), into a fresh temporary folder with its own SQLite MLflow store. Prints, per size,
the mean test MAE of each code with its 90% t-interval over repetitions, and whether the other
code's mean lies inside it; and the ratio of wall times (base / current) per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]


def run(root: Path, config: Path, extra: list[str]) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "s2r_ray.cli", "run", str(config.resolve())]
        cmd += ["--out", str(out), "--set", f"tracking.uri=sqlite:///{tmp}/m.db", *extra]
        start = time.perf_counter()
        env = os.environ | {"PYTHONPATH": str(root)}
        p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if p.returncode:
            sys.exit(f"{root}: s2r run failed\n{p.stderr[-3000:]}")
        lines = (out / "cells.jsonl").read_text().splitlines()
        timing = json.loads((out / "report.json").read_text()).get("timing", {})
        print(f"  {root.name}: {timing}", flush=True)
        return seconds, [json.loads(line) for line in lines if line.strip()]


def by_size(records: list[dict]) -> dict[tuple, tuple[float, float, float]]:
    """(n, m) -> (mean test MAE, 90% interval low, high) over repetitions."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[(r["n"], r.get("m"))].append(r["mae"])
    out = {}
    for key, v in sorted(groups.items()):
        a = np.asarray(v)
        half = stats.t.ppf(0.95, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0
        out[key] = (float(a.mean()), float(a.mean() - half), float(a.mean() + half))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--current-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    extra = (["--quick"] if args.quick else []) + [a for s in args.set for a in ("--set", s)]
    own = {"base": extra, "current": extra + [a for s in args.current_set for a in ("--set", s)]}
    walls: dict[str, list[float]] = defaultdict(list)
    records: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, root in (("base", args.base), ("current", REPO)):
            seconds, records[name] = run(root, args.config, own[name])
            walls[name].append(seconds)
            print(f"{name}: {seconds:.1f} s, load {os.getloadavg()}", flush=True)
    for i, (b, c) in enumerate(zip(walls["base"], walls["current"], strict=True)):
        print(f"round {i}: base {b:.1f} s, current {c:.1f} s: x{b / c:.2f}")
    base, cur = by_size(records["base"]), by_size(records["current"])
    for key in base:
        (mb, lb, hb), (mc, lc, hc) = base[key], cur.get(key, (np.nan,) * 3)
        verdict = "within" if lb <= mc <= hb and lc <= mb <= hc else "OUTSIDE"
        print(f"n={key[0]:6d} m={key[1]}: base {mb:.4f} [{lb:.4f}, {hb:.4f}]  "
              f"current {mc:.4f} [{lc:.4f}, {hc:.4f}]  {verdict}")  # fmt: skip
    same = sum(
        a["mae"] == b["mae"]
        for a in records["base"]
        for b in records["current"]
        if a["cell"] == b["cell"]
    )
    print(f"cells with the identical test MAE: {same} of {len(records['base'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
