"""K fine-tuning members of the demo MLP trained as one batch against K trained one after
another, on the current code and on a base checkout of the code, interleaved in one run.

    nice -n 5 .venv/bin/python benchmarks/batched_members.py --base /work/wt-batch-base [--ks 8 24]

Each measurement is its own process (PYTHONPATH = the checkout measured): `sequential` is K
`finetune` calls (the path every trial and every scoring member took before), `batched` one
`finetune_members` call of K (one stacked network per step, each member its own AdamW), and
`vmap` the same step with the forward through `torch.func.functional_call` + `vmap` instead of
the batched products (dropout 0: vmap draws one mask stream for all members). Rounds alternate
base/current so that a change of machine load hits both; the medians and their ratios are
printed. Members: the demo's MLP [128, 64, 32] on 8 features, m=300 target rows, batch 32,
12 epochs, one thread, after a 2-epoch warm-up run; each process times its mode 3 times and
keeps the fastest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HP = {"lr": 2e-3, "weight_decay": 1e-5, "epochs": 12, "batch_size": 32, "freeze": 0, "dropout": 0.0}


def _setup():
    import torch

    from s2r_ray.config import StudyConfig, SyntheticData
    from s2r_ray.data.synthetic import make_synthetic
    from s2r_ray.models import make_family
    from s2r_ray.protocol import make_plan

    torch.set_num_threads(1)
    cfg = StudyConfig(name="b", sizes=[300], repetitions=1, target_sizes=[300])
    cfg.model.hidden = [128, 64, 32]
    plan = make_plan(cfg, make_synthetic(SyntheticData(n_source=1000, n_target=5000)))
    cell = next(c for c in plan.cells if c.is_baseline)
    return make_family(cfg), plan.target_split(cell)


def _hps(k: int) -> list[dict]:
    """Own lr and weight decay per member, as a packed cell has them; with S2R_SAME_HP set, one
    hp for all, as a scoring ensemble has it (its members then share one AdamW)."""
    if os.environ.get("S2R_SAME_HP"):
        return [HP] * k
    return [HP | {"lr": 1e-3 * (1 + i % 5), "weight_decay": 10.0 ** -(4 + i % 3)} for i in range(k)]


def measure(mode: str, k: int, repeats: int = 3) -> dict:
    """Steps (member-steps) per second of wall time in this process: the best of `repeats`
    (on a shared machine the fastest repeat is the one least slowed by other load)."""
    family, split = _setup()
    hps, seeds = _hps(k), list(range(k))
    steps = k * HP["epochs"] * -(-len(split[0]) // HP["batch_size"])
    family.finetune(*split, hp=HP | {"epochs": 2}, seed=0)  # first calls: lazy inits, caches
    seconds = min(_once(family, split, mode, hps, seeds) for _ in range(repeats))
    return {"mode": mode, "k": k, "seconds": seconds, "steps_per_s": steps / seconds}


def _once(family, split, mode: str, hps: list[dict], seeds: list[int]) -> float:
    start = time.perf_counter()
    if mode == "sequential":
        for hp, seed in zip(hps, seeds, strict=True):
            family.finetune(*split, hp=hp, seed=seed)
    elif mode == "batched":
        from s2r_ray.models.base import Target

        family.finetune_members([Target(*split)] * len(hps), hps=hps, seeds=seeds)
    else:  # vmap: the same loop, the stacked forward through torch.func
        import torch
        from torch.func import functional_call, vmap

        from s2r_ray.models.base import Target

        def stacked(modules, x, noise):
            names = [n for n, _ in modules[0].named_parameters()]
            params = {
                n: torch.stack([dict(m.named_parameters())[n] for m in modules]) for n in names
            }
            return vmap(lambda p, xb: functional_call(modules[0], p, (xb,)))(params, x)

        family.stacked = lambda: stacked  # type: ignore[method-assign]
        family.finetune_members([Target(*split)] * len(hps), hps=hps, seeds=seeds)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, help="a checkout of the code before the change")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 24])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--same-hp", action="store_true", help="one hp for all members (an ensemble)")
    p.add_argument("--one", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.same_hp:
        os.environ["S2R_SAME_HP"] = "1"
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    runs = [("current", m) for m in ("sequential", "batched", "vmap")]
    runs += [("base", "sequential")] if args.base else []
    results: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for k in args.ks:
            for code, mode in runs:
                root = args.base if code == "base" else REPO
                env = os.environ | {"PYTHONPATH": str(root)}
                cmd = [sys.executable, str(REPO / "benchmarks" / "batched_members.py"), "--one"]
                out = subprocess.run(
                    [*cmd, mode, str(k)], env=env, cwd=root, capture_output=True, text=True
                )
                if out.returncode:
                    sys.exit(f"{code} {mode} K={k} failed:\n{out.stderr[-2000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((code, mode, k), []).append(r["steps_per_s"])
    print(f"load: {os.getloadavg()}")
    for k in args.ks:
        med = {key[:2]: statistics.median(v) for key, v in results.items() if key[2] == k}
        ref = med[("base", "sequential")] if args.base else med[("current", "sequential")]
        for key, v in sorted(med.items()):
            spread = results[(*key, k)]
            print(f"K={k:3d} {key[0]:8s} {key[1]:10s} {v:8.0f} steps/s  x{v / ref:.2f} "
                  f"(rounds: {', '.join(f'{s:.0f}' for s in spread)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
