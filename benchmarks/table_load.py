"""Peak memory and time of loading one large table side (issue #19: tables read in chunks).

Tables, written as CSV to a temporary folder (the shared data stays where it is):
  oqmd  the OQMD band-gap source (341,608 formulas) repeated `--copies` times with shifted
        values, `composition` features
  wide  `--rows` rows of 64 ready-made float32 feature columns (`columns` featurizer), an id
        and a value: the per-row features are the table

The cache is warmed first, so each load measures reading, checking, keying and reduction, not
featurization. Each load runs in a child process; its peak RSS is the child's own (`ru_maxrss`).

    S2R_DATA_DIR=/work/shared/data PYTHONPATH=. .venv/bin/python benchmarks/table_load.py oqmd \
        --copies 10 --base /path/to/older/worktree
    PYTHONPATH=. .venv/bin/python benchmarks/table_load.py wide --rows 1000000 --base ...

`--base DIR` also loads it with DIR's code (first on PYTHONPATH), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("S2R_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
OQMD = DATA / "inorganic_bandgap/oqmd_gap_crabnet.csv.gz"


SPECS = {
    "oqmd": {"id_columns": ["formula"], "value_column": "gap", "featurizer": "composition"},
    "wide": {
        "id_columns": ["id"],
        "value_column": "y",
        "featurizer": "columns",
        "featurizer_options": {"prefix": "x"},
    },
}


def child(case: str, table: Path, cache: Path) -> None:
    """One load of the table's source side here: rows, seconds and peak RSS on stdout."""
    import resource

    from s2r_ray.config import TableSpec
    from s2r_ray.data.featurizers import make_featurizer
    from s2r_ray.data.tables import load_side

    spec = TableSpec(path=str(table), **SPECS[case])
    featurizer = make_featurizer(spec.featurizer, spec.featurizer_options)
    start = time.perf_counter()
    side = load_side(spec, "source", featurizer, cache, None)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "rows_read": side.counts["source_rows_read"],
                "keys": len(side.keys),
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak_kib / 1024),
            }
        )
    )


def run(case: str, table: Path, cache: Path, code: str | None) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([*([code] if code else []), "."])}
    cmd = [sys.executable, __file__, case, "--child", str(table), str(cache)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {"code": code or "this"} | json.loads(done.stdout.strip().splitlines()[-1])


def write_table(case: str, path: Path, copies: int, rows: int) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    if case == "oqmd":
        oqmd = pd.read_csv(OQMD, keep_default_na=False, usecols=["formula", "gap_oqmd_pbe_eV"])
        gap = oqmd.pop("gap_oqmd_pbe_eV")
        for copy in range(copies):  # each copy's values shifted: a key has several rows
            table = oqmd.assign(gap=gap + 0.01 * copy)
            table.to_csv(path, mode="a", header=copy == 0, index=False)
        return
    rng = np.random.default_rng(0)
    columns = {"id": pa.array(np.char.add("M", np.arange(rows).astype(str))), "y": rng.random(rows)}
    columns |= {f"x{j}": rng.standard_normal(rows, dtype=np.float32) for j in range(64)}
    pa_csv.write_csv(pa.table(columns), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=sorted(SPECS))
    parser.add_argument("--copies", type=int, default=10, help="oqmd: copies of the table")
    parser.add_argument("--rows", type=int, default=1_000_000, help="wide: rows")
    parser.add_argument("--base", help="a worktree whose code loads the table too")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.case, *args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        table, cache = Path(tmp) / f"{args.case}.csv", Path(tmp) / "cache"
        write_table(args.case, table, args.copies, args.rows)
        print(f"load: {os.getloadavg()}; {table.stat().st_size >> 20} MiB of CSV", flush=True)
        print(json.dumps({"warm-up": run(args.case, table, cache, None)}), flush=True)
        for code in [None, args.base] if args.base else [None]:
            print(json.dumps(run(args.case, table, cache, code)), flush=True)


if __name__ == "__main__":
    main()
