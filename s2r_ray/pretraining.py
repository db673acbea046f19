"""Pretraining as Ray work: once per (n, repetition), tracked in its own MLflow run."""

from __future__ import annotations

import ray

from s2r_ray import tracking
from s2r_ray.config import StudyConfig
from s2r_ray.model import Pretrained, pretrain
from s2r_ray.protocol import Cell, Plan
from s2r_ray.tracking import TrackingContext
from s2r_ray.workers import setup_worker


@ray.remote
def pretrain_cell(plan: Plan, cell: Cell, cfg: StudyConfig, ctx: TrackingContext) -> Pretrained:
    """Train on the first n rows of the repetition's source permutation, stopping on the
    repetition's source hold-out (disjoint from every subset)."""
    device = setup_worker(cfg.tune.pretrain_resources.cpu)
    ds, rep = plan.dataset, plan.repetitions[cell.repetition]
    params = {
        "n": cell.n,
        "repetition": cell.repetition,
        "holdout_rows": len(rep.holdout),
        **cfg.pretrain.model_dump(),
        "hidden": cfg.model.hidden,
    }
    with tracking.nested_run(ctx, cell, "pretrain", f"pretrain {cell.pretrain_id}", params) as run:
        result = pretrain(
            *plan.source_split(cell),
            model_cfg=cfg.model,
            hp=cfg.pretrain,
            seed=rep.seed,
            X_extra=ds.target_X[rep.train],
            device=device,
        )
        tracking.log_curve(ctx, run, "source_val_mae", result.curve)
        tracking.log(
            ctx,
            run,
            {
                "final_source_val_mae": result.source_val_mae,
                "steps": result.steps,
                "converged": float(result.converged),
                "seconds": result.seconds,
            },
        )
    return result
