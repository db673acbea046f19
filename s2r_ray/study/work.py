"""The Ray Tune trainable: every unit of the study's work runs in a (reused) Tune trial actor, so
one scheduler hands out the cluster. A pretraining stores its network and reports its summary;
a trial trains on the cell's target train rows, logged from inside it, and reports validation
MAE each epoch for ASHA; a scoring rebuilds the selected trial and reports the cell record."""

from __future__ import annotations

import math
import time

from ray import tune

from s2r_ray.config import StudyConfig
from s2r_ray.models.base import Diverged, Family
from s2r_ray.protocol import Plan
from s2r_ray.scoring import score_cell
from s2r_ray.study import tracking, units
from s2r_ray.study.pretrained import PretrainedStore
from s2r_ray.study.tracking import TrackingContext
from s2r_ray.study.units import METRIC, RESULT, Failure, Pretraining, PretrainingSummary, Trial
from s2r_ray.study.workers import ray_node, setup_worker


def run_unit(
    config: dict,
    *,
    plan: Plan,
    store: PretrainedStore,
    family: Family,
    cfg: StudyConfig,
    ctx: TrackingContext,
) -> None:
    """Run the unit a Tune config carries. Fine-tuning trials never read the test split. A
    trial whose loss diverges ends FAILED with a last report saying so; one that raises is
    retried by Tune (`tune.max_failures`). A pretraining or scoring that raises fails its
    cells, not the study (not retried: the same seed fails the same way)."""
    unit = units.from_config(config)
    if isinstance(unit, Pretraining):
        tune.report({RESULT: _pretrain(unit, plan, store, family, cfg, ctx)})
        return
    device = setup_worker(cfg.tune.resources.cpu)
    pre = None if unit.cell.is_baseline else store.load(unit.cell.pretrain_id)
    if isinstance(unit, Trial):
        _finetune(unit, plan, None if pre is None else pre.state, family, ctx, device)
        return
    record = score_cell(plan, unit, pre, family, cfg.finetune.ensemble, device)
    tune.report({RESULT: units.Scored(record)})


def _pretrain(
    unit: Pretraining,
    plan: Plan,
    store: PretrainedStore,
    family: Family,
    cfg: StudyConfig,
    ctx: TrackingContext,
) -> PretrainingSummary | Failure:
    """Train on the first n rows of the repetition's source permutation, stopping on the
    repetition's source hold-out (disjoint from every subset); the network goes to the store
    before the job reports, so no later loss can take it."""
    device = setup_worker(cfg.tune.pretrain_resources.cpu)
    ds, rep = plan.dataset, plan.repetitions[unit.cell.repetition]
    params = {
        "n": unit.cell.n,
        "repetition": unit.cell.repetition,
        "holdout_rows": len(rep.holdout),
        **cfg.pretrain.model_dump(),
        "model": cfg.model.model_dump(),
        "device": device,
        "ray_node": ray_node(),
    }
    try:
        with tracking.nested_run(ctx, unit.cell, "pretrain", f"pretrain {unit.key}", params) as run:
            result = family.pretrain(
                *plan.source_split(unit.cell),
                seed=rep.seed,
                X_extra=ds.target_X[rep.train],
                device=device,
            )
            summary = PretrainingSummary(
                result.source_val_mae, result.steps, result.converged, result.seconds
            )
            tracking.log_curve(ctx, run, "source_val_mae", result.curve)
            tracking.log(
                ctx,
                run,
                {
                    "final_source_val_mae": summary.source_val_mae,
                    "steps": summary.steps,
                    "converged": float(summary.converged),
                    "seconds": summary.seconds,
                },
            )
        store.save(unit.key, result)
    except Exception as e:
        return Failure(_last_line(e))
    return summary


def _finetune(
    trial: Trial, plan: Plan, state: dict | None, family: Family, ctx: TrackingContext, device: str
) -> None:
    """`train_seconds` excludes logging, so the study can tell how much of its wall time went
    into training versus orchestration."""
    params = {**trial.hp, "seed": trial.seed, "trial_key": trial.key}
    params |= {"device": device, "ray_node": ray_node()}
    try:
        with tracking.nested_run(ctx, trial.cell, "trial", trial.key, params) as run:
            start, overhead = time.perf_counter(), 0.0

            def on_epoch(epoch: int, val_mae: float, best: float) -> None:
                nonlocal overhead
                t = time.perf_counter()
                tracking.log(ctx, run, {"val_mae": val_mae, "best_val_mae": best}, step=epoch)
                trained = t - start - overhead
                overhead += time.perf_counter() - t
                tune.report({METRIC: best, "val_mae": val_mae, "train_seconds": trained})

            family.finetune(
                *plan.target_split(trial.cell),
                hp=trial.hp,
                seed=trial.seed,
                pretrained=state,
                device=device,
                on_epoch=on_epoch,
            )
    except Diverged as e:  # not worth a retry: the same seed diverges again
        tune.report({METRIC: math.inf, "diverged": str(e)})


def _last_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][-300:]
