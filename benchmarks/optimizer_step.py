"""Whole trainings of the demo MLP on the current code and on a base checkout, alternating
processes: three pretrainings of one n as one batch (each its own optimiser and plateau
schedule) and three fine-tunings as one (own learning rates). Made for the one AdamW kernel
call per step (`torch_family.step_all`), which must leave every number as it was: each
process prints its results' digits, and they are compared.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/optimizer_step.py --base /work/wt/base
        [--n 1000] [--rounds 3]
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/optimizer_step.py --steps

One thread; each process times each training once after a short warm-up training. `--steps`:
one step of three demo MLPs as one batch (batch 128) four ways, ms per step, in this process:
`Optimizer.step` per member's optimiser (the code before), one optimiser with a group per
member, one functional call (`step_all`), and weights kept stacked as (K, out, in) leaves under
one optimiser (the bound the per-member lists leave).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HP = {"lr": 2e-3, "weight_decay": 1e-5, "epochs": 40, "batch_size": 16, "freeze": 0, "dropout": 0.0}


def measure(n: int) -> dict:
    import torch

    from s2r_ray.config import load_config
    from s2r_ray.data.synthetic import make_synthetic
    from s2r_ray.models import make_family
    from s2r_ray.models.base import Source, Target
    from s2r_ray.protocol import make_plan

    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    plan = make_plan(cfg, make_synthetic(cfg.data.synthetic))
    family, ds = make_family(cfg), plan.dataset
    sources = [
        Source(
            ds.source_X[r.source_subset(n)],
            ds.source_y[r.source_subset(n)],
            ds.source_X[r.holdout],
            ds.source_y[r.holdout],
            seed=i,
        )
        for i, r in enumerate(plan.repetitions)
    ]
    family.pretrain_members(sources[:1])  # warm-up: lazy inits, caches
    start = time.perf_counter()
    pre = family.pretrain_members(sources)
    pretrain_s = time.perf_counter() - start
    cell = next(c for c in plan.cells if c.n == n and c.m == 120)
    target = Target(*plan.target_split(cell), pretrained=pre[0].state)
    hps = [HP, HP | {"lr": 3e-3}, HP | {"freeze": 1}]
    start = time.perf_counter()
    tuned = family.finetune_members([target] * 3, hps=hps, seeds=[1, 2, 3])
    finetune_s = time.perf_counter() - start
    digits = [repr(p.source_val_mae) for p in pre] + [repr(t.curve) for t in tuned]
    return {"pretrain_s": pretrain_s, "finetune_s": finetune_s, "digits": digits}


def steps(k: int = 3, batch: int = 128, repeats: int = 2000) -> dict[str, float]:
    import itertools

    import torch
    from torch import nn

    from s2r_ray.models.mlp import MLP, forward_stacked
    from s2r_ray.models.torch_family import _Optimizer, step_all

    torch.set_num_threads(1)
    nets = [MLP(8, [128, 64, 32]) for _ in range(k)]
    params = [list(m.parameters()) for m in nets]
    x, y = torch.randn(k, batch, 8), torch.randn(k, batch)
    noise = [torch.Generator() for _ in nets]

    def backward(clear: Callable[[], object]) -> None:
        clear()
        (forward_stacked(nets, x, noise) - y).abs().mean(dim=1).sum().backward()

    def set_none() -> None:  # as `train_members` clears gradients now
        for p in itertools.chain(*params):
            p.grad = None

    each = [torch.optim.AdamW(ps, lr=2e-3, fused=True) for ps in params]
    grouped = torch.optim.AdamW([{"params": ps} for ps in params], lr=2e-3, fused=True)

    class Run:  # what `_Optimizer` reads of a pretraining member
        pretraining, n, bs = True, batch, batch
        plan = type("Plan", (), {"lr": 2e-3, "weight_decay": 1e-2, "patience": 8})

        def __init__(self, params: list[nn.Parameter]):
            self.params = params

    mine = [_Optimizer([Run(ps)], "cpu") for ps in params]
    layers = [[layer for block in m.body for layer in block[:1]] + [m.head] for m in nets]
    W = [nn.Parameter(torch.stack([ls[i].weight.detach() for ls in layers])) for i in range(4)]
    b = [nn.Parameter(torch.stack([ls[i].bias.detach() for ls in layers])) for i in range(4)]
    leaves = torch.optim.AdamW(W + b, lr=2e-3, fused=True)

    def stacked_step() -> None:
        h = x
        for i in range(4):
            h = torch.baddbmm(b[i].unsqueeze(1), h, W[i].mT)
            h = nn.functional.silu(h) if i < 3 else h
        leaves.zero_grad(set_to_none=True)
        (h.squeeze(-1) - y).abs().mean(dim=1).sum().backward()
        leaves.step()

    ways = {
        "Optimizer.step per member": lambda: (
            backward(lambda: [o.zero_grad(set_to_none=True) for o in each]),
            [o.step() for o in each],
        ),
        "one optimiser, a group per member": lambda: (
            backward(lambda: grouped.zero_grad(set_to_none=True)),
            grouped.step(),
        ),
        "one functional call (step_all)": lambda: (backward(set_none), step_all(mine, True)),
        "stacked leaves, one optimiser": stacked_step,
    }
    out = {}
    for name, step in ways.items():
        for _ in range(100):
            step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        out[name] = 1e3 * (time.perf_counter() - start) / repeats
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, help="a checkout of the code before (required)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", action="store_true", help="step times, four ways, this process")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps:
        for _ in range(args.rounds):
            print({name: round(ms, 3) for name, ms in steps().items()}, flush=True)
        return 0
    if args.one:
        print(json.dumps(measure(args.n)))
        return 0
    if args.base is None:
        p.error("--base is required")
    results: dict[str, list[dict]] = {"base": [], "current": []}
    for _ in range(args.rounds):
        for code, root in (("base", args.base), ("current", REPO)):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one"]
            env = os.environ | {"PYTHONPATH": str(root)}
            out = subprocess.run(
                [*cmd, "--n", str(args.n)], env=env, cwd=root, capture_output=True, text=True
            )
            if out.returncode:
                sys.exit(f"{code} failed:\n{out.stderr[-2000:]}")
            results[code].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load: {os.getloadavg()}")
    for key in ("pretrain_s", "finetune_s"):
        base, cur = ([r[key] for r in results[c]] for c in ("base", "current"))
        ratio = statistics.median(base) / statistics.median(cur)
        listed = {c: ", ".join(f"{v:.2f}" for v in vs) for c, vs in (("base", base), ("cur", cur))}
        print(f"{key}: base {listed['base']}; current {listed['cur']}; median ratio x{ratio:.2f}")
    same = all(r["digits"] == results["base"][0]["digits"] for c in results for r in results[c])
    print("results identical to the last digit" if same else "RESULTS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
