"""Featurization as Ray tasks over a cluster of nodes on this machine (issue #19), rows/s.

Cases, each cold (an empty cache):
  oqmd      `load_dataset` of configs/bandgap_oqmd.yaml (341,608 OQMD formulas + the target)
  polymers  N distinct repeat units made from the shipped ones by RDKit substitution (a hydrogen
            of a ring or chain carbon replaced by F, Cl, Br, CH3, OCH3, CF3, C#N, OH, NH2, ...;
            two substitutions where one does not give enough), keyed and featurized

    PYTHONPATH=. .venv/bin/python benchmarks/featurize_cluster.py oqmd --nodes 1 2 --cpus 1
    PYTHONPATH=. .venv/bin/python benchmarks/featurize_cluster.py polymers --units 100000 --nodes 2

Each (case, nodes) runs in a fresh process with its own loopback cluster (loopback_cluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("S2R_DATA_DIR", REPO.parent / "shared" / "data"))
SUBSTITUENTS = ["F", "Cl", "Br", "C", "OC", "C(F)(F)F", "C#N", "O", "N", "CC", "C(C)C", "c1ccccc1"]


def repeat_units(n: int) -> list[str]:
    """n distinct canonical repeat units (two `*`) grown from the shipped ones by substitution."""
    import pandas as pd
    from rdkit import Chem, rdBase

    seeds = set()
    for name in (
        "radonpy_pi1070/pi1070_md_properties.csv",
        "polymer_afzal2020_md_exp/afzal2020_tg_density_md_exp.csv",
    ):
        seeds |= set(pd.read_csv(DATA / name, keep_default_na=False)["smiles_canonical"])
    out: dict[str, None] = dict.fromkeys(sorted(s for s in seeds if s.count("*") == 2))
    frontier = list(out)
    with rdBase.BlockLogs():
        while len(out) < n and frontier:
            grown = []
            for smiles in frontier:
                mol = Chem.MolFromSmiles(smiles)
                if mol is None:
                    continue
                for atom in mol.GetAtoms():
                    if atom.GetSymbol() != "C" or atom.GetTotalNumHs() == 0:
                        continue
                    for sub in SUBSTITUENTS:
                        rw = Chem.RWMol(Chem.AddHs(mol))
                        h = next(
                            x.GetIdx()
                            for x in rw.GetAtomWithIdx(atom.GetIdx()).GetNeighbors()
                            if x.GetAtomicNum() == 1
                        )
                        frag = Chem.MolFromSmiles(sub)
                        combo = Chem.RWMol(Chem.CombineMols(rw, frag))
                        combo.AddBond(atom.GetIdx(), rw.GetNumAtoms(), Chem.BondType.SINGLE)
                        combo.RemoveAtom(h)
                        try:
                            new = Chem.MolToSmiles(Chem.RemoveHs(combo))
                        except Exception:
                            continue
                        if new not in out:
                            out[new] = None
                            grown.append(new)
                            if len(out) >= n:
                                return list(out)[:n]
            frontier = grown
    return list(out)[:n]


def child(case: str, nodes: int, cpus: int, units: int, tmp: Path) -> dict:
    """One case on a fresh loopback cluster of `nodes` x `cpus`: rows, seconds, rows per node."""
    sys.path.insert(0, str(Path(__file__).parent))
    from loopback_cluster import loopback_cluster

    from s2r_ray.config import load_config
    from s2r_ray.data import load_dataset
    from s2r_ray.data.cache import FeatureStore
    from s2r_ray.data.featurizers import make_featurizer
    from s2r_ray.study.fanout import RayPool

    if case == "polymers":
        import pandas as pd

        path = tmp / "units.csv"
        pd.DataFrame({"smiles": repeat_units(units)}).to_csv(path, index=False)
    with loopback_cluster(nodes, cpus):
        pool = RayPool()
        start = time.perf_counter()
        if case == "oqmd":
            cfg = load_config(REPO / "configs/bandgap_oqmd.yaml")
            cfg.data.cache_dir = str(tmp / "cache")
            ds = load_dataset(cfg.data, executor=pool)
            rows = ds.counts["source_rows_read"] + ds.counts["target_rows_read"]
        else:
            ids = [(s,) for s in pd.read_csv(path)["smiles"]]
            store = FeatureStore(tmp / "cache", path, make_featurizer("polymer"), pool)
            keys = [k for k in store.canonical(ids) if isinstance(k, str)]
            store.features(list(dict.fromkeys(keys)))
            rows = len(ids)
        seconds = time.perf_counter() - start
    return {
        "case": case,
        "nodes": nodes,
        "cpus_per_node": cpus,
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "items_by_node": sorted(Counter(pool.rows_by_node).values(), reverse=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=["oqmd", "polymers"])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each node")
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            result = child(args.case, args.child, args.cpus, args.units, Path(tmp))
        print(json.dumps(result))
        return
    print(f"load: {os.getloadavg()}", flush=True)
    for nodes in args.nodes:
        cmd = [sys.executable, __file__, args.case, "--cpus", str(args.cpus)]
        cmd += ["--units", str(args.units), "--child", str(nodes)]
        env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "S2R_DATA_DIR": str(DATA)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
