"""The Ray Tune trainable: every unit of the study's work runs in a (reused) Tune trial actor, so
one scheduler hands out the cluster: a cell's pretraining, one fine-tuning trial of a cell
(logged from inside the trial), or the scoring of a cell whose trials have all ended."""

from __future__ import annotations

import json
import math
import time

import ray
from ray import tune

from s2r_ray import tracking
from s2r_ray.config import StudyConfig
from s2r_ray.models.base import Diverged, Family
from s2r_ray.pretraining import pretrain_job
from s2r_ray.protocol import Cell, Plan
from s2r_ray.scoring import score_cell
from s2r_ray.search import METRIC
from s2r_ray.tracking import TrackingContext
from s2r_ray.workers import fetch_pretrained, ray_node, setup_worker


def study_job(
    config: dict,
    *,
    plan: Plan,
    reducer: ray.actor.ActorHandle,
    family: Family,
    cfg: StudyConfig,
    ctx: TrackingContext,
) -> None:
    """A pretraining when the config names one (see `pretrain_job`); else train on the
    cell's target train rows and report validation MAE each epoch for ASHA.

    Fine-tuning trials never read the test split; a scoring job (a config with "score") rebuilds
    the selected trial's model and evaluates it once. `train_seconds` excludes logging, so the
    study can tell how much of its wall time went into training versus orchestration. A trial
    whose loss diverges ends FAILED with a last report saying so; one that raises is retried by
    Tune (`tune.max_failures`).
    """
    cell = Cell(**config["cell"])
    if "pretrain" in config:
        summary = pretrain_job(plan, cell, family, cfg, ctx, reducer)
        value = summary.get("final_source_val_mae", math.inf)
        tune.report({METRIC: value, "pretraining": json.dumps(summary, default=float)})
        return
    device = setup_worker(cfg.tune.resources.cpu)
    pre = None
    if not cell.is_baseline:
        pre = fetch_pretrained(cell.pretrain_id, reducer)
    if "score" in config:
        record = score_cell(plan, cell, config["score"], pre, family, cfg, device)
        # One JSON field: Tune flattens nested results, and wants the scheduler's metric.
        tune.report({METRIC: record["val_mae"], "record": json.dumps(record, default=float)})
        return
    state = None if pre is None else pre.state
    params = {**config["hp"], "seed": config["seed"], "trial_key": config["trial_key"]}
    params |= {"device": device, "ray_node": ray_node()}
    try:
        with tracking.nested_run(ctx, cell, "trial", config["trial_key"], params) as run:
            start, overhead = time.perf_counter(), 0.0

            def on_epoch(epoch: int, val_mae: float, best: float) -> None:
                nonlocal overhead
                t = time.perf_counter()
                tracking.log(ctx, run, {"val_mae": val_mae, "best_val_mae": best}, step=epoch)
                trained = t - start - overhead
                overhead += time.perf_counter() - t
                tune.report({METRIC: best, "val_mae": val_mae, "train_seconds": trained})

            family.finetune(
                *plan.target_split(cell),
                hp=config["hp"],
                seed=config["seed"],
                pretrained=state,
                device=device,
                on_epoch=on_epoch,
            )
    except Diverged as e:  # not worth a retry: the same seed diverges again
        tune.report({METRIC: math.inf, "diverged": str(e)})
