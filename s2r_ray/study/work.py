"""The Ray Tune trainable: every unit of the study's work runs in a (reused) Tune trial actor, so
one scheduler hands out the cluster. A pretraining stores its network and reports its summary;
a trial trains on the cell's target train rows, logged from inside it, and reports validation
MAE each epoch for ASHA (a pack of trials: `s2r_ray.study.packed`); a scoring rebuilds the
selected trial, evaluates it once on test and reports the cell record that the ledger, the
reducer and the report all read."""

from __future__ import annotations

import math
import time

import numpy as np
from ray import tune

from s2r_ray.config import StudyConfig
from s2r_ray.models.base import Diverged, Family, Pretrained, Source, Target, mae, rmse
from s2r_ray.protocol import Plan
from s2r_ray.study import tracking, units
from s2r_ray.study.packed import run_pack, run_params
from s2r_ray.study.pretrained import PretrainedStore
from s2r_ray.study.tracking import TrackingContext
from s2r_ray.study.units import (
    ENDED,
    EPOCH,
    METRIC,
    RESULT,
    Failure,
    KeptNetwork,
    Pack,
    Pretraining,
    PretrainingSummary,
    Trial,
)
from s2r_ray.study.workers import ray_node, setup_worker


def run_unit(
    config: dict,
    *,
    plan: Plan,
    store: PretrainedStore,
    family: Family,
    cfg: StudyConfig,
    ctx: TrackingContext,
    rungs: tuple[int, ...],
) -> None:
    """Run the unit a Tune config carries. Fine-tuning trials never read the test split, and
    report to Tune at the epochs ASHA acts on (`rungs`) and at their last epoch. A
    trial whose loss diverges ends FAILED with a last report saying so; one that raises is
    retried by Tune (`tune.max_failures`). A pretraining or scoring that raises reports its
    `Failure` and fails its cells, not the study (not retried: the same seed fails the same
    way), so the only errors of theirs Tune sees are lost processes, actors and nodes."""
    unit = units.from_config(config)
    if isinstance(unit, Pretraining):
        tune.report({RESULT: _pretrain(unit, plan, store, family, cfg, ctx)})
        return
    device = setup_worker(cfg.tune.resources.cpu)
    if isinstance(unit, Pack):
        run_pack(unit, plan, family, ctx, device, store)
        return
    pre = None if unit.cell.is_baseline else store.load(unit.cell.pretrain_id)
    state = None if pre is None else pre.state
    if isinstance(unit, Trial):
        _finetune(unit, plan, state, family, ctx, device, store, rungs)
        return
    try:
        kept = store.load_trial(unit.trial.key)
        record = score_cell(plan, unit, pre, family, cfg.finetune.ensemble, device, kept)
    except Exception as e:
        tune.report({RESULT: _failure(e)})
        return
    tune.report({RESULT: units.Scored(record)})


def _failure(e: Exception) -> Failure:
    """The last line of the error, short enough for a ledger record and a progress line."""
    return Failure((str(e).strip().splitlines() or [type(e).__name__])[-1][-300:])


def _pretrain(
    unit: Pretraining,
    plan: Plan,
    store: PretrainedStore,
    family: Family,
    cfg: StudyConfig,
    ctx: TrackingContext,
) -> units.PretrainingOutcomes:
    """Train each pair on the first n rows of its repetition's source permutation, stopping on
    the repetition's source hold-out (disjoint from every subset), the pairs of a pack as one
    batch. A network goes to the store before its MLflow run ends and the job reports, so no
    later loss can take it, and a run ends FINISHED only for a network that was kept (one lost
    with its node ends KILLED); a pair that diverged fails alone."""
    device = setup_worker(cfg.tune.pretrain_resources.cpu)
    ds, base = plan.dataset, {**cfg.pretrain.model_dump(), "model": cfg.model.model_dump()}
    base |= {"device": device, "ray_node": ray_node(), "pack_size": len(unit.pairs)}
    sources, curves = [], []
    try:
        for pair in unit.pairs:
            rep = plan.repetitions[pair.repetition]
            params = base | {"n": pair.n, "repetition": pair.repetition}
            params["holdout_rows"] = len(rep.holdout)
            curves.append(tracking.open_run(ctx, pair, "pretrain", pair.pretrain_id, params))
            sources.append(Source(*plan.source_split(pair), rep.seed, ds.target_X[rep.train]))
        results = family.pretrain_members(sources, device)
    except BaseException as e:
        for curve in curves:
            curve.end("KILLED" if isinstance(e, SystemExit) else "FAILED")
        if isinstance(e, SystemExit):
            raise
        return tuple(_failure(e) for _ in unit.pairs)
    return tuple(
        _kept(key, result, curve, store, ctx)
        for key, result, curve in zip(unit.keys, results, curves, strict=True)
    )


def _kept(
    key: str,
    result: Pretrained | Diverged,
    curve: tracking.Curve,
    store: PretrainedStore,
    ctx: TrackingContext,
) -> PretrainingSummary | Failure:
    """One pair's network to the store and its run ended: FINISHED only once it is kept."""
    if isinstance(result, Diverged):
        curve.end("FAILED")
        return _failure(result)
    try:
        s = PretrainingSummary(
            result.source_val_mae, result.steps, result.converged, result.seconds
        )
        tracking.log_curve(ctx, curve.run_id, "source_val_mae", result.curve)
        metrics = {"final_source_val_mae": s.source_val_mae, "steps": s.steps}
        metrics |= {"converged": float(s.converged), "seconds": s.seconds}
        tracking.log(ctx, curve.run_id, metrics)
        store.save(key, result)
    except Exception as e:
        curve.end("FAILED")
        return _failure(e)
    curve.end("FINISHED")
    return s


def _finetune(
    trial: Trial,
    plan: Plan,
    state: dict | None,
    family: Family,
    ctx: TrackingContext,
    device: str,
    store: PretrainedStore,
    rungs: tuple[int, ...],
) -> None:
    """A trial reports to Tune only at its rung epochs and once training ends (its last epoch,
    whatever a family calls an epoch, marked `ENDED`): ASHA decides nothing in between, and each
    report waits for the driver to take it (Tune's reporting is synchronous: 8-14% of a demo
    trial actor's CPU, in py-spy, went into per-epoch reports; its curve goes to MLflow every
    epoch regardless). Waiting there, a trial ASHA stops at a rung ends in that report (a
    SystemExit), at the rung; and its last report returns once the driver has told Optuna, so
    its run ends FINISHED only for a trial that a study stopped or killed then never runs again.
    `train_seconds` excludes logging and the time blocked in `tune.report`, so the study can
    tell how much of its wall time went into training versus orchestration. The trial's own
    network goes to the store as it ends, however it ends, so its cell's scoring need not train
    it again."""
    params, kept = run_params(trial, device), KeptNetwork([])
    last: dict = {}  # the latest epoch's result
    try:
        with tracking.nested_run(ctx, trial.cell, "trial", trial.key, params) as run:
            start, overhead = time.perf_counter(), 0.0

            def on_epoch(epoch: int, val_mae: float, best: float) -> None:
                nonlocal overhead
                t = time.perf_counter()
                kept.reached = epoch
                trained = t - start - overhead
                run.add({"val_mae": val_mae, "best_val_mae": best}, step=epoch)
                last.update(
                    {METRIC: best, "val_mae": val_mae, "train_seconds": trained, EPOCH: epoch}
                )
                if epoch in rungs:
                    tune.report(last.copy())
                overhead += time.perf_counter() - t

            try:
                family.finetune(
                    *plan.target_split(trial.cell),
                    hp=trial.hp,
                    seed=trial.seed,
                    pretrained=state,
                    device=device,
                    on_epoch=on_epoch,
                    on_best=kept.add,
                )
            except Diverged:
                raise  # a diverged trial is never scored from what it kept
            except BaseException:
                _keep(store, trial, kept)  # stopped (SystemExit) or failed: what it reached
                raise
            _keep(store, trial, kept)
            tune.report(last | {ENDED: True})  # again at a rung's epoch: the end is this one
    except Diverged as e:  # not worth a retry: the same seed diverges again
        tune.report({METRIC: math.inf, "diverged": str(e), EPOCH: kept.reached + 1, ENDED: True})


def _keep(store: PretrainedStore, trial: Trial, kept: KeptNetwork) -> None:
    if kept.bests:
        store.save_trial(trial.key, kept.trimmed())


def score_cell(
    plan: Plan,
    unit: units.Scoring,
    pretrained: Pretrained | None,
    family: Family,
    ensemble: int,
    device: str,
    kept: KeptNetwork | None = None,
) -> dict:
    """The cell's result record: test MAE/RMSE of the selected configuration (averaged over
    `ensemble` seeds, the first being the trial's own: its `kept` network when the trial kept
    it, else trained again from its seed), the zero-shot error of the pretrained model, and
    the simulation-alone error on the same test rows. The other members train as one batch."""
    start = time.perf_counter()
    cell, trial = unit.cell, unit.trial
    ds, rep = plan.dataset, plan.repetitions[cell.repetition]
    X_test, y_test = ds.target_X[rep.test], ds.target_y[rep.test]
    state = pretrained.state if pretrained is not None else None
    own = kept.at(unit.stop_epoch) if kept is not None else None
    preds, vals = [], []
    if own is not None:
        preds.append(family.load(own[0]).predict(X_test, device))
        vals.append(own[1])
    seeds = [trial.seed + i for i in range(len(preds), ensemble)]
    target = Target(*plan.target_split(cell), pretrained=state)
    for ft in family.finetune_members(
        [target] * len(seeds),
        hps=[trial.hp] * len(seeds),
        seeds=seeds,
        stop_epochs=[unit.stop_epoch] * len(seeds),
        device=device,
    ):
        if isinstance(ft, Diverged):
            raise ft
        preds.append(ft.predictor.predict(X_test, device))
        vals.append(ft.best_val_mae)
    mean = np.mean(preds, axis=0)
    record = {
        "cell": cell.id,
        **cell.to_dict(),
        "status": "ok",
        "device": device,
        "mae": mae(y_test, mean),
        "rmse": rmse(y_test, mean),
        "single_mae": mae(y_test, preds[0]),
        "val_mae": vals[0],
        "trial_network_reused": own is not None,
        "selection_val_mae": unit.selection_val_mae,
        "best_trial": trial.key,
        "best_hp": trial.hp,
        "test_rows": len(rep.test),
        "train_rows": len(rep.target_train(cell.m)),
    }
    ref = ds.target_reference[rep.test] if ds.target_reference is not None else np.array([np.nan])
    has_ref = np.isfinite(ref)
    record["reference_rows"] = int(has_ref.sum())
    record["reference_mae"] = mae(y_test[has_ref], ref[has_ref]) if has_ref.any() else None
    if pretrained is not None:
        source = pretrained.source_val_mae
        record |= {
            "zero_shot_mae": mae(y_test, family.load(state).predict(X_test, device)),
            "source_val_mae": None if source is None or not np.isfinite(source) else float(source),
            "pretrain_converged": pretrained.converged,
            "pretrain_steps": pretrained.steps,
            "pretrain_seconds": pretrained.seconds,
        }
    record["score_seconds"] = time.perf_counter() - start
    return record
