"""Featurization throughput, cold and cached, with peak memory.

Cases:
  composition  the 341,608 OQMD formulas (canonical keys + composition features)
  polymer      every distinct SMILES of the shared polymer files (RDKit fingerprint + descriptors)
  load         `load_dataset` of configs/bandgap_oqmd.yaml end to end (read, clean, key, join)

Each (case, phase) runs in a fresh process, so its peak RSS (ru_maxrss; workers reported apart)
belongs to it alone; "cached" reuses the cache the "cold" run wrote.

    .venv/bin/python benchmarks/featurize.py [--workers N] [--cases composition polymer load]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("S2R_DATA_DIR", REPO.parent / "shared" / "data"))
POLYMER_FILES = {
    "polymer_afzal2020_md_exp/afzal2020_tg_density_md_exp.csv": ["smiles_canonical"],
    "radonpy_pi1070/pi1070_md_properties.csv": ["smiles_canonical"],
    "polymer_chi_cosmo_exp/chi_cosmo_rs_yoshida.csv": ["polymer_smiles", "solvent_smiles"],
    "polymer_chi_cosmo_exp/chi_exp_orwoll_arnold_yoshida.csv": ["polymer_smiles", "solvent_smiles"],
    "polymer_chi_cosmo_exp/chi_exp_polyverse_nistane2022.csv": ["polymer_smiles", "solvent_smiles"],
}


def polymer_input(directory: Path) -> Path:
    """A file of the distinct SMILES in the shared polymer tables (a FeatureStore keys on files)."""
    import pandas as pd

    smiles = {
        s
        for name, columns in POLYMER_FILES.items()
        for c in columns
        for s in pd.read_csv(DATA / name, keep_default_na=False)[c]
        if s
    }
    path = directory / "smiles.csv"
    pd.DataFrame({"smiles": sorted(smiles)}).to_csv(path, index=False)
    return path


def run_store(featurizer_name: str, path: Path, column: str, cache: Path, workers: int) -> int:
    """Canonical keys and features of every distinct id of one column, as `load_dataset` does."""
    import pandas as pd

    from s2r_ray.data.cache import FeatureStore
    from s2r_ray.data.featurizers import make_featurizer, process_pool

    ids = list(dict.fromkeys((v,) for v in pd.read_csv(path, keep_default_na=False)[column]))
    with process_pool(workers) as pool:
        store = FeatureStore(cache, path, make_featurizer(featurizer_name), pool)
        keys = [k for k in store.canonical(ids) if isinstance(k, str)]
        store.features(list(dict.fromkeys(keys)))
    return len(ids)


def measure(case: str, cache: Path, workers: int) -> dict[str, float]:
    """One (case, phase) in this process: rows, seconds, peak RSS of this process and workers."""
    start = time.perf_counter()
    if case == "composition":
        rows = run_store(
            "composition",
            DATA / "inorganic_bandgap/oqmd_gap_crabnet.csv.gz",
            "formula",
            cache,
            workers,
        )
    elif case == "polymer":
        rows = run_store("polymer", polymer_input(cache), "smiles", cache, workers)
    else:
        from s2r_ray.config import load_config
        from s2r_ray.data import load_dataset

        cfg = load_config(REPO / "configs/bandgap_oqmd.yaml")
        cfg.data.cache_dir = str(cache)
        rows = load_dataset(cfg.data, workers=workers).counts["source_rows_read"]
    seconds = time.perf_counter() - start
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib),
        "peak_worker_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cases", nargs="+", default=["composition", "polymer", "load"])
    parser.add_argument("--child", nargs=2, metavar=("CASE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.workers)))
        return
    print(f"workers={args.workers}, cpus={os.cpu_count()}, data={DATA}")
    for case in args.cases:
        with tempfile.TemporaryDirectory() as cache:
            for phase in ("cold", "cached"):
                cmd = [sys.executable, __file__, "--workers", str(args.workers)]
                out = subprocess.run(
                    [*cmd, "--child", case, cache], check=True, capture_output=True, text=True
                ).stdout
                print(json.dumps({"case": case, "phase": phase, **json.loads(out)}), flush=True)


if __name__ == "__main__":
    main()
