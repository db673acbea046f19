"""Pin a deterministic study's per-cell results, to show a change of code keeps them.

The study is the fault tests' 8-cell chain (tests/chain_study.yaml), whose every number depends
on the code alone, not on the order trials end in.

    python benchmarks/pin_cells.py --out /tmp/pin-before.json         # on the old code
    python benchmarks/pin_cells.py --out /tmp/pin-after.json          # on the new code
    python benchmarks/pin_cells.py --compare /tmp/pin-before.json /tmp/pin-after.json

`--set tune.pack=2` pins the study with a config change (the chain's two trials of a cell in one
pack); `--rel 1e-4` compares numbers to a relative tolerance instead of the last digit (members
trained as one network differ from each trained alone in the float order of the stacked sums).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import yaml

CHAIN = yaml.safe_load((Path(__file__).parents[1] / "tests" / "chain_study.yaml").read_text())
PINNED = ("mae", "single_mae", "zero_shot_mae", "source_val_mae", "val_mae", "best_trial")


def pin(out: Path, overrides: list[str]) -> dict:
    from s2r_ray.config import build_config
    from s2r_ray.folder import StudyFolder
    from s2r_ray.study.driver import run_study

    with tempfile.TemporaryDirectory() as tmp:
        raw = {**CHAIN, "tracking": {"uri": f"sqlite:///{tmp}/m.db"}}
        cfg = build_config(raw, overrides=overrides)
        run_study(cfg, Path(tmp) / "out", echo=lambda line: None)
        cells = {
            r["cell"]: {k: r.get(k) for k in PINNED}
            for r in StudyFolder(Path(tmp) / "out").ledger()
        }
    out.write_text(json.dumps(dict(sorted(cells.items())), indent=1))
    return cells


def _same(x: object, y: object, rel: float) -> bool:
    if rel and isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=rel)
    return x == y


def compare(before: Path, after: Path, rel: float = 0.0) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = [
        f"{cell} {k}: {a[cell][k]!r} -> {b.get(cell, {}).get(k)!r}"
        for cell in a
        for k in PINNED
        if not _same(a[cell][k], b.get(cell, {}).get(k), rel)
    ]
    differ += [f"{cell}: only after" for cell in b if cell not in a]
    same = f"within a relative {rel:g}" if rel else "identical to the last digit"
    print("\n".join(differ) or f"{len(a)} cells x {len(PINNED)} values: {same}")
    return 1 if differ else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="write the pinned cells here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rel", type=float, default=0.0, help="--compare: relative tolerance")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare, rel=args.rel)
    if not args.out:
        p.error("give --out or --compare")
    pin(args.out, args.set)
    print(f"pinned {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
