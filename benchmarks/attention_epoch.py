"""Composition attention on the MP band-gap pool: what the `elements` featurizer keeps, and what
one pretraining epoch and a forward pass cost.

Loads configs/bandgap_mp.yaml's tables with the `elements` featurizer (rejections per reason,
element-count histogram), then for each model size trains one epoch over the whole source pool
at batch 256 (AdamW, L1 on standardised y, as `TorchFamily.pretrain`) and reports its wall
time, the MAE on 5,000 held-out source rows after it, and eval throughput.

    nice -n 5 .venv/bin/python benchmarks/attention_epoch.py [--threads 2] [--max-elements 8]
        [--sizes 64x2 32x1] [--epochs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import yaml

from s2r_ray.config import DataConfig
from s2r_ray.data import load_dataset
from s2r_ray.models.attention import CompositionAttention

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = 5000


def load(max_elements: int, cache_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Source rows and values, and the load counts, of bandgap_mp with the elements featurizer."""
    os.environ.setdefault("S2R_DATA_DIR", str(REPO.parent / "shared" / "data"))
    data = yaml.safe_load((REPO / "configs" / "bandgap_mp.yaml").read_text())["data"]
    for side in ("source", "target"):
        data[side] |= {
            "featurizer": "elements",
            "featurizer_options": {"max_elements": max_elements},
        }
    ds = load_dataset(DataConfig.model_validate(data | {"cache_dir": cache_dir}), workers=2)
    for side, X in (("source", ds.source_X), ("target", ds.target_X)):
        sizes = Counter((X[:, :max_elements] > 0).sum(axis=1).tolist())
        print(
            f"{side}: {len(X)} compositions, elements per composition {dict(sorted(sizes.items()))}"
        )
    rejected = {k: v for k, v in ds.counts.items() if "rejected" in k}
    print(
        f"rejected: {rejected or 'none'}; columns kept {ds.source_X.shape[1]}, dropped "
        f"{ds.counts['dropped_constant_features']}"
    )
    return ds.source_X, ds.source_y, ds.counts


def epoch(
    model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, opt, gen
) -> tuple[float, float]:
    """One pass over the rows in random batches of 256; its wall and CPU seconds (CPU time is
    the figure that survives a shared, overloaded machine)."""
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for idx in torch.randperm(len(X), generator=gen).split(256):
        idx = idx.to(X.device)
        loss = torch.nn.functional.l1_loss(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if X.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def predict(model: torch.nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Eval predictions in batches of 4096 and the rows per CPU second (per wall second on a
    GPU)."""
    model.eval()
    clock = time.perf_counter if X.is_cuda else time.process_time
    start = clock()
    with torch.no_grad():
        out = torch.cat([model(b) for b in X.split(4096)])
    if X.is_cuda:
        torch.cuda.synchronize()
    return out, len(X) / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-elements", type=int, default=8)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["64x2", "32x1", "128x3"],
        help="d_model x encoder layers (heads 4, feed-forward 2 d_model)",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=".s2r_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X, y, _ = load(args.max_elements, args.cache_dir)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    val, train = order[:HOLDOUT], order[HOLDOUT:]
    center, scale = y[train].mean(), y[train].std()
    Xt = torch.from_numpy(X).to(args.device)
    yt = torch.from_numpy(((y - center) / scale).astype(np.float32)).to(args.device)
    print(f"training rows {len(train)}, device {args.device}, threads {args.threads}")
    for size in args.sizes:
        d_model, layers = map(int, size.split("x"))
        torch.manual_seed(0)
        model = CompositionAttention(d_model, 4, layers, 2 * d_model, d_model).to(args.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(0)
        params = sum(p.numel() for p in model.parameters())
        for e in range(1, args.epochs + 1):
            seconds, cpu = epoch(model, Xt[train], yt[train], opt, gen)
            pred, rate = predict(model, Xt[val])
            mae = float((pred.cpu().numpy() * scale + center - y[val]).__abs__().mean())
            print(
                f"d_model {d_model} layers {layers} ({params} params) epoch {e}: "
                f"{seconds:.1f} s wall, {cpu:.1f} s CPU "
                f"({len(train) / 256 / seconds:.0f} steps/s), "
                f"hold-out MAE {mae:.3f} eV, eval {rate:,.0f} rows/CPU-s"
            )


if __name__ == "__main__":
    main()
