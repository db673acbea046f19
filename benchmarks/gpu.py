"""GPU figures for s2r-ray, on synthetic data alone, and a check that the GPU path works.

    python benchmarks/gpu.py [--out DIR]       # where CUDA is: ~10 min on one H200 (estimate)
    python benchmarks/gpu.py --device cpu --tiny      # the same logic, small, on any machine

1. Pretraining throughput (rows/s) on the largest pool, `TorchFamily.pretrain` against a bare
   torch loop (same network, batch and optimiser) on the same device: what s2r's loop costs.
   And pretrainings of one n (own rows and seeds) one after another against 2, 4 and 8 as one
   batch (`pretrain_members`, `tune.pretrain_pack`), for the demo's MLP and the full one:
   whether the default of 1 on a GPU should change (on a CPU it packs small networks).
2. Fine-tuning trials/s with 1, 2, 4 and 8 trials sharing one GPU (`tune.resources.gpu` 1, 0.5,
   0.25, 0.125), with GPU memory and utilisation sampled from nvidia-smi meanwhile; and the
   same trials as packs of 1, 4, 16 and 64 members per GPU (`tune.pack`: one Tune trial on a
   whole GPU trains its members as one network, `finetune_members`), trials/s counting members.
3. The demo study (--quick) on the GPU (trials 0.25 GPU, pretraining 0.25 GPU x 2 slots)
   against the same study on CPUs: wall time, test MAE, the device every cell ran on, and how
   exactly the scorer rebuilt each selected trial.

Without CUDA (and without --device cpu) it says so and exits 0. With --device cpu, Ray is given
one logical GPU so that the fractional scheduling runs as on a GPU node, on CPU tensors. Figures
go to DIR/gpu.json and DIR/gpu.md (--out, else $OUT), and to stdout. Exits 1 when a check fails
(a cell failed, a cell ran on another device than asked, predictions differ across devices).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from torch import nn

from s2r_ray.config import PretrainConfig, SyntheticData, load_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.folder import StudyFolder
from s2r_ray.models.base import Source, Target
from s2r_ray.models.mlp import MLP, MLPFamily, MLPOptions, Scaler
from s2r_ray.models.torch_family import Network
from s2r_ray.study.driver import run_study
from s2r_ray.study.workers import setup_worker

REPO = Path(__file__).resolve().parents[1]
SHARING = (1.0, 0.5, 0.25, 0.125)
FT_HP = {"lr": 1e-3, "weight_decay": 1e-5, "batch_size": 32, "freeze": 0, "dropout": 0.0}


@dataclass(frozen=True)
class Scale:
    pool: int  # source rows: the largest pool (OQMD has 341,608 x 176)
    features: int
    hidden: tuple[int, ...]
    pretrain_steps: int
    target: int  # target rows of the fine-tuning trials
    trials: int  # fine-tuning trials per sharing level
    packs: tuple[int, ...]  # members per pack; each level trains max(packs) members
    epochs: int
    pretrain_packs: tuple[int, ...]  # pretrainings of one n trained as one batch
    study_overrides: tuple[str, ...]


FULL = Scale(300_000, 176, (512, 256, 128), 6000, 2000, 16, (1, 4, 16, 64), 30, (1, 2, 4, 8), ())
TINY = Scale(
    5_000,
    12,
    (32, 16),
    300,
    200,
    4,
    (1, 4),
    3,
    (1, 2),
    (
        "sizes=[50,300]",
        "repetitions=1",
        "tune.trials_per_cell=1",
        "finetune.epochs=[3,5]",
        "pretrain.max_steps=300",
        "report.n_boot=50",
    ),
)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_rows_per_s(X: np.ndarray, y: np.ndarray, family: MLPFamily, device, steps) -> float:
    """The floor: tensors on the device, indices drawn there, nothing else per step."""
    torch.manual_seed(0)
    hp = family.pretrain_hp
    net = MLP(X.shape[1], family.options.hidden, family.options.activation).to(device)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(X), (hp.batch_size,), device=device)
        loss = nn.functional.l1_loss(net(Xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * hp.batch_size / (time.perf_counter() - start)


def pretraining(scale: Scale, device: str) -> dict:
    """s2r's pretrain on the whole pool (one pass per evaluation, as in a study) and the bare
    loop, each after a short warm-up (CUDA context, cuBLAS handles)."""
    ds = make_synthetic(SyntheticData(n_source=scale.pool, n_target=100, n_features=scale.features))
    holdout = scale.pool // 10
    X, y = ds.source_X[holdout:], ds.source_y[holdout:]
    X_val, y_val = ds.source_X[:holdout], ds.source_y[:holdout]
    options = MLPOptions(hidden=list(scale.hidden))
    hp = PretrainConfig(patience=10**6, max_steps=scale.pretrain_steps)
    family = MLPFamily(options, hp)
    warm = MLPFamily(options, hp.model_copy(update={"max_steps": 20, "min_steps_per_eval": 20}))
    warm.pretrain(X[:5000], y[:5000], X_val[:500], y_val[:500], seed=0, device=device)
    bare_rows_per_s(X, y, warm, device, 20)
    p = family.pretrain(X, y, X_val, y_val, seed=0, device=device)
    s2r = p.steps * hp.batch_size / p.seconds
    bare = bare_rows_per_s(X, y, family, device, scale.pretrain_steps)
    return {
        "pool_rows": len(X),
        "features": scale.features,
        "hidden": list(scale.hidden),
        "batch_size": hp.batch_size,
        "steps": p.steps,
        "s2r_rows_per_s": round(s2r),
        "bare_rows_per_s": round(bare),
        "s2r_vs_bare": round(s2r / bare, 3),
    }


def pretraining_packs(scale: Scale, device: str) -> list[dict]:
    """Pretrainings of one n, each its own rows (a permutation of the pool) and seed, run to a
    fixed step count (no plateau stop, so both ways train the same steps): one after another,
    then as one batch; seconds per network, and the speed-up of the batch."""
    rows = min(scale.pool, 50_000)
    steps = max(100, scale.pretrain_steps // 3)
    out = []
    for hidden, features in (((128, 64, 32), 8), (scale.hidden, scale.features)):
        ds = make_synthetic(SyntheticData(n_source=rows, n_target=100, n_features=features))
        X_val, y_val = ds.source_X[: rows // 10], ds.source_y[: rows // 10]
        hp = PretrainConfig(patience=10**6, max_steps=steps)
        family = MLPFamily(MLPOptions(hidden=list(hidden)), hp)
        sources = []
        for k in range(max(scale.pretrain_packs)):
            own = np.random.default_rng(k).permutation(np.arange(rows // 10, rows))
            sources.append(Source(ds.source_X[own], ds.source_y[own], X_val, y_val, k))
        family.pretrain_members(sources[:2], device)  # warm-up: CUDA context, kernels
        for k in scale.pretrain_packs:
            sync(device)
            start = time.perf_counter()
            for source in sources[:k]:
                family.pretrain_members([source], device)
            sync(device)
            alone = time.perf_counter() - start
            start = time.perf_counter()
            family.pretrain_members(sources[:k], device)
            sync(device)
            together = time.perf_counter() - start
            out.append(
                {
                    "hidden": list(hidden),
                    "features": features,
                    "rows": len(sources[0].y),
                    "steps": steps,
                    "pretrainings": k,
                    "alone_s_per_network": round(alone / k, 3),
                    "together_s_per_network": round(together / k, 3),
                    "speedup": round(alone / together, 3),
                }
            )
    return out


class GpuSampler:
    """nvidia-smi every half second on a thread: peak memory and mean utilisation."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used"]
        while not self._stop.wait(0.5):
            line = subprocess.run(
                [*query, "--format=csv,noheader,nounits", "--id=0"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if line:
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((util, mem))

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_mem_peak_mib": None}
        utils, mems = zip(*self.samples, strict=True)
        return {
            "gpu_util_mean_pct": round(float(np.mean(utils)), 1),
            "gpu_mem_peak_mib": max(mems),
        }


def _finetune_trial(config: dict, data: tuple) -> None:
    """One fine-tuning trial as s2r runs it: device from Ray's grant, a report per epoch."""
    device = setup_worker(1)
    MLPFamily(MLPOptions(hidden=config["hidden"]), PretrainConfig()).finetune(
        *data,
        hp=FT_HP | {"epochs": config["epochs"]},
        seed=config["seed"],
        device=device,
        on_epoch=lambda epoch, val, best: tune.report({"val_mae": val, "device": device}),
    )


def _finetune_pack(config: dict, data: tuple) -> None:
    """A pack of fine-tuning trials as s2r runs it: its members as one network on the whole
    GPU, a report per round (epoch)."""
    device, k = setup_worker(1), config["members"]

    def report(diverged: dict) -> list[int]:
        tune.report({"device": device})
        return []  # no member leaves before its epochs are done

    MLPFamily(MLPOptions(hidden=config["hidden"]), PretrainConfig()).finetune_members(
        [Target(*data)] * k,
        hps=[FT_HP | {"epochs": config["epochs"]}] * k,
        seeds=[config["seed"] * k + i for i in range(k)],
        device=device,
        on_round=report,
    )


def _data(scale: Scale) -> tuple:
    ds = make_synthetic(
        SyntheticData(n_source=10, n_target=scale.target, n_features=scale.features)
    )
    cut = [int(0.7 * scale.target), int(0.85 * scale.target)]
    X, y = np.split(ds.target_X, cut), np.split(ds.target_y, cut)
    return (X[0], y[0], X[1], y[1])


def _fit(trainable, space: dict, resources: dict, storage: Path, name: str) -> dict:
    """One Tune run of `trainable` over `space`: wall time, errors, devices, GPU samples."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
    )
    with GpuSampler() as gpu:
        start = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - start
    return {
        "tune_trials": len(results),
        "errors": results.num_errors,
        "wall_s": round(wall, 1),
        "devices": sorted({r.metrics.get("device", "?") for r in results}),
        **gpu.summary(),
    }


def sharing(scale: Scale, storage: Path) -> list[dict]:
    """Trials/s at each share of one GPU; the trials a level runs at once is 1/share."""
    trainable = tune.with_parameters(_finetune_trial, data=_data(scale))
    space = {
        "seed": tune.grid_search(list(range(scale.trials))),
        "hidden": list(scale.hidden),
        "epochs": scale.epochs,
    }
    rows = []
    for share in SHARING:
        run = _fit(trainable, space, {"cpu": 1, "gpu": share}, storage, f"share{share}")
        trials = run.pop("tune_trials")
        rows.append(
            {
                "gpu_per_trial": share,
                "trials_at_once": round(1 / share),
                "trials": trials,
                "trials_per_s": round(trials / run["wall_s"], 3),
                **run,
            }
        )
    return rows


def packing(scale: Scale, storage: Path) -> list[dict]:
    """Trials/s with packs of k members on one whole GPU each: max(packs) trials per level."""
    trainable = tune.with_parameters(_finetune_pack, data=_data(scale))
    total, rows = max(scale.packs), []
    for k in scale.packs:
        space = {
            "seed": tune.grid_search(list(range(total // k))),
            "members": k,
            "hidden": list(scale.hidden),
            "epochs": scale.epochs,
        }
        run = _fit(trainable, space, {"cpu": 1, "gpu": 1}, storage, f"pack{k}")
        rows.append(
            {
                "members_per_pack": k,
                "trials": total,
                "trials_per_s": round(total / run["wall_s"], 3),
            }
            | run
        )
    return rows


def study(out: Path, overrides: list[str], gpu: bool) -> dict:
    """The demo study (--quick) with the given overrides: wall time and what its cells say."""
    extra = ["tune.resources.gpu=0.25", "tune.pretrain_resources.gpu=0.25"] if gpu else []
    extra += ["tune.pretrain_slots=2", f"tracking.uri=sqlite:///{out}/mlruns.db"]
    cfg = load_config(REPO / "configs" / "demo.yaml", [*overrides, *extra], quick=True)
    with GpuSampler() as sampler:
        start = time.perf_counter()
        report = run_study(cfg, out / "study", echo=lambda line: None)
        wall = time.perf_counter() - start
    cells = StudyFolder(out / "study").ledger()
    ok = [c for c in cells if c["status"] == "ok"]
    rebuilt = [abs(c["val_mae"] / c["selection_val_mae"] - 1) for c in ok]
    return {
        "wall_s": round(wall, 1),
        "cells": len(cells),
        "failed_cells": len(cells) - len(ok),
        "devices": sorted({c.get("device", "?") for c in ok}),
        "largest_n_mae": report["sizes"][-1]["test_mae_mean"] if report.get("sizes") else None,
        "scorer_vs_trial_val_mae_max_rel_diff": max(rebuilt, default=None),
        **sampler.summary(),
    }


def predict_matches(device: str) -> float | None:
    """Largest difference between predictions on `device` and on the CPU, for a network rebuilt
    from its state (as zero-shot scoring does it)."""
    if device == "cpu":
        return None
    family = MLPFamily(MLPOptions(hidden=[64, 32]), PretrainConfig())
    X = np.random.default_rng(0).normal(size=(256, 8))
    net = family.load(Network(MLP(8, [64, 32]), Scaler.fit(X), 8, 0.0, 1.0).state())
    on_cpu = net.predict(X, "cpu")
    return float(np.max(np.abs(net.predict(X, device) - on_cpu)))


def checks(result: dict, device: str) -> list[str]:
    """What must hold for the GPU path to be working; each failure as a sentence."""
    failed = []
    for name in ("study_gpu", "study_cpu"):
        if result[name]["failed_cells"]:
            failed.append(f"{name}: {result[name]['failed_cells']} cell(s) failed")
    if result["study_gpu"]["devices"] != [device]:
        failed.append(f"study_gpu ran its cells on {result['study_gpu']['devices']}, not {device}")
    if any(
        row["errors"] or row["devices"] != [device] for row in result["sharing"] + result["packing"]
    ):
        failed.append("a fine-tuning sharing or packing level had errors or ran off the device")
    diff = result["predict_max_abs_diff_vs_cpu"]
    if diff is not None and not diff < 1e-4:
        failed.append(f"predictions on {device} differ from the CPU's by {diff:.3g}")
    return failed


def markdown(result: dict) -> str:
    """The figures as the tables that go into the README."""
    p = result["pretraining"]
    lines = [
        f"# GPU benchmark ({result['device_name']}, {result['scale']})",
        "",
        f"Pretraining on {p['pool_rows']:,} rows x {p['features']} features, MLP {p['hidden']}, "
        f"batch {p['batch_size']}: s2r {p['s2r_rows_per_s']:,} rows/s, bare torch loop "
        f"{p['bare_rows_per_s']:,} rows/s (s2r / bare = {p['s2r_vs_bare']}).",
        "",
        "| MLP | pretrainings of one n | s per network alone | s per network as one batch | "
        "speed-up |",
        "|---|---|---|---|---|",
        *(
            f"| {r['features']}-{'-'.join(map(str, r['hidden']))} ({r['rows']:,} rows, "
            f"{r['steps']} steps) | {r['pretrainings']} | {r['alone_s_per_network']} | "
            f"{r['together_s_per_network']} | {r['speedup']} |"
            for r in result["pretraining_packs"]
        ),
        "",
        "| gpu per trial | trials at once | trials/s | wall s | GPU util % | GPU mem MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["sharing"]:
        lines.append(
            f"| {r['gpu_per_trial']} | {r['trials_at_once']} | {r['trials_per_s']} | "
            f"{r['wall_s']} | {r['gpu_util_mean_pct']} | {r['gpu_mem_peak_mib']} |"
        )
    lines += ["", "| members per pack (one GPU each) | trials | trials/s | wall s | GPU util % |"]
    lines.append("|---|---|---|---|---|")
    for r in result["packing"]:
        lines.append(
            f"| {r['members_per_pack']} | {r['trials']} | {r['trials_per_s']} | {r['wall_s']} | "
            f"{r['gpu_util_mean_pct']} |"
        )
    lines += ["", "| demo study (--quick) | wall s | cells failed | devices | MAE at largest n |"]
    lines.append("|---|---|---|---|---|")
    for name in ("study_gpu", "study_cpu"):
        s = result[name]
        lines.append(
            f"| {name} | {s['wall_s']} | {s['failed_cells']} | {', '.join(s['devices'])} | "
            f"{s['largest_n_mae']} |"
        )
    lines += ["", "Checks: " + ("; ".join(result["checks_failed"]) or "all passed")]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="small sizes: a smoke run of the logic")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu.json, gpu.md")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU here, nothing measured (--device cpu --tiny smoke-runs it)")
        return 0
    for name in (
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
    ):
        os.environ.setdefault(name, "true")
    scale = TINY if args.tiny else FULL
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    result: dict = {
        "device": args.device,
        "device_name": name,
        "scale": "tiny" if args.tiny else "full",
    }
    result["scale_settings"] = asdict(scale)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    start = time.perf_counter()
    result["pretraining"] = pretraining(scale, args.device)
    result["pretraining_packs"] = pretraining_packs(scale, args.device)
    result["predict_max_abs_diff_vs_cpu"] = predict_matches(args.device)
    with tempfile.TemporaryDirectory(prefix="s2r-gpu-", dir="/tmp") as tmp:
        tmp_path = Path(tmp)
        # one logical GPU on a CPU machine: the fractions are scheduled as on a GPU node
        ray.init(num_gpus=1, include_dashboard=False, _temp_dir=str(tmp_path / "ray"))
        try:
            result["sharing"] = sharing(scale, tmp_path / "tune")
            result["packing"] = packing(scale, tmp_path / "tune")
            for label, gpu in (("study_gpu", True), ("study_cpu", False)):
                (tmp_path / label).mkdir()
                result[label] = study(tmp_path / label, list(scale.study_overrides), gpu)
        finally:
            ray.shutdown()
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["checks_failed"] = checks(result, args.device)
    print(json.dumps(result, indent=2))
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gpu.json").write_text(json.dumps(result, indent=2))
        (folder / "gpu.md").write_text(markdown(result))
    return 1 if result["checks_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
