"""The study, top to bottom: data -> plan -> pretraining tasks -> one Tune experiment of
fine-tuning trials -> scoring per cell -> the reducer's live fit -> report.

Pretraining runs once per (n, r) as Ray tasks submitted up front (small n first). The searcher
only hands out trials of cells whose pretraining is done, so trials of all sizes interleave on
the cluster without a barrier between sizes, and no trial ever idles waiting for a model.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TBX writers per trial
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no status tables
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")

import ray
import yaml
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from s2r_ray import tracking
from s2r_ray.config import StudyConfig
from s2r_ray.data import load_dataset
from s2r_ray.pretraining import Pretrainings
from s2r_ray.protocol import make_plan
from s2r_ray.reducer import Reducer, read_ledger
from s2r_ray.search import CellSearcher, PerCellASHA
from s2r_ray.trial import finetune_trial

Echo = Callable[[str], None]


def init_ray(address: str | None) -> bool:
    """Join a cluster when an address is given (or RAY_ADDRESS is set), else start a local Ray.
    Returns whether this call started Ray (and so should stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


class _Progress(tune.Callback):
    """Runs in Tune's loop: prints each finished pretraining and each cell's reducer line as
    soon as they are ready."""

    def __init__(self, pending: list[ray.ObjectRef], pretrainings: Pretrainings, echo: Echo):
        self._pending, self._pretrainings, self._echo = pending, pretrainings, echo

    def __getstate__(self) -> dict:
        return {}  # live handles of this driver only; nothing to restore

    def drain(self, timeout: float = 0) -> None:
        while self._pending:
            ready, _ = ray.wait(self._pending, num_returns=1, timeout=timeout)
            if not ready:
                return
            self._pending.remove(ready[0])
            self._echo(ray.get(ready[0]))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._pretrainings.poll()
        self.drain()


def _trial_resources(cfg: StudyConfig) -> dict[str, float]:
    return {"cpu": cfg.tune.resources.cpu, "gpu": cfg.tune.resources.gpu}


def _dataset_tags(cfg: StudyConfig) -> dict[str, str]:
    if cfg.data.kind == "synthetic":
        return {"s2r.dataset": "synthetic", "s2r.property": cfg.data.property}
    return {
        "s2r.dataset": f"{Path(cfg.data.source.path).name} -> {Path(cfg.data.target.path).name}",
        "s2r.property": cfg.data.property,
    }


def run_study(
    cfg: StudyConfig, out: Path, *, address: str | None = None, echo: Echo = print
) -> dict:
    """Run a whole study and return its final report (also in <out>/report.json)."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    ds = load_dataset(cfg.data, out)
    plan = make_plan(cfg, ds)
    pretrain_ids = {c.pretrain_id for c in plan.cells if not c.is_baseline}
    leak = [r.excluded_for_leakage for r in plan.repetitions]
    echo(
        f"study {cfg.name}: {len(ds.source_y)} source rows, {len(ds.target_y)} target rows, "
        f"{len(ds.feature_names)} features; {len(plan.cells)} cells x {cfg.tune.trials_per_cell} "
        f"trials, {len(pretrain_ids)} pretrainings; {max(leak)} source rows kept out as test ids"
    )
    started_ray = init_ray(address)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    ctx = tracking.start_study(
        uri,
        cfg.tracking.experiment,
        cfg.name,
        cfg.model_dump(mode="json"),
        cfg.sizes,
        _dataset_tags(cfg),
    )
    echo(f"MLflow: {uri} (experiment {cfg.tracking.experiment!r}, run {ctx.study_run_id})")
    planned = dict(Counter(c.n for c in plan.cells))
    extra = {
        "counts": {
            **ds.counts,
            "source_rows_excluded_as_test_ids": max(leak),
            "source_holdout_rows": len(plan.repetitions[0].holdout),
        },
        "mlflow": {"tracking_uri": uri, "study_run_id": ctx.study_run_id},
    }
    tracking.log(ctx, ctx.study_run_id, params={"counts": extra["counts"]})  # rejected rows too
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reducer = Reducer.options(scheduling_strategy=here).remote(
        cfg, str(out.resolve()), ctx, planned, extra
    )
    status, pretrainings = "failed", None
    try:
        plan_ref = ray.put(plan)
        pretrainings = Pretrainings(plan, plan_ref, cfg, ctx, echo)
        pretrained = pretrainings.refs

        pending: list[ray.ObjectRef] = []
        searcher = CellSearcher(
            plan.cells,
            cfg.finetune,
            cfg.tune.trials_per_cell,
            cfg.tune.startup_trials,
            cfg.seed,
            pretrainings.ready,
            lambda record: pending.append(reducer.add_cell.remote(record)),
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                finetune_trial, plan=plan_ref, pretrained=pretrained, cfg=cfg, ctx=ctx
            ),
            _trial_resources(cfg),
        )
        progress = _Progress(pending, pretrainings, echo)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=PerCellASHA(
                    _max_epochs(cfg), cfg.tune.grace_period, cfg.tune.reduction_factor
                ),
                num_samples=len(plan.cells) * (cfg.tune.trials_per_cell + 1),  # + scoring
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str((out / "ray").resolve()),
                verbose=0,
                callbacks=[progress],
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        tuner.fit()  # trial metrics live in the ledger and MLflow, not Tune's result files
        progress.drain(timeout=None)
        status = "complete"
    finally:
        if pretrainings is not None:
            pretrainings.release()
        wall = time.time() - start
        timing = {"wall_seconds": round(wall, 2)}
        if status == "complete":
            timing |= _timing(read_ledger(out), pretrainings, wall, cfg)
        report = ray.get(reducer.finish.remote(status, {"timing": timing}))
        tracking.end(ctx, ctx.study_run_id, "FINISHED" if status == "complete" else "FAILED")
        if started_ray:
            ray.shutdown()
    return report


def _max_epochs(cfg: StudyConfig) -> int:
    e = cfg.finetune.epochs
    return max(e) if isinstance(e, tuple) else e


def _timing(records: list[dict], pretrainings: Pretrainings, wall: float, cfg: StudyConfig) -> dict:
    """Where the wall time went: training inside trials, pretraining and scoring versus the rest
    (process start-up, scheduling, logging, waiting)."""
    ok = [r for r in records if r.get("status") == "ok"]
    trial_s = sum(r.get("trial_seconds", 0.0) for r in ok)
    per_pretraining = {(r["n"], r["repetition"]): r.get("pretrain_seconds", 0.0) for r in ok}
    pretrain_s = sum(per_pretraining.values())
    score_s = sum(r.get("score_seconds", 0.0) for r in ok)
    slots = max(1.0, float(ray.cluster_resources().get("CPU", 1)) / cfg.tune.resources.cpu)
    return {
        "trials": sum(r.get("trials", 0) for r in records),
        "pretrainings": len(pretrainings.refs),
        "pretrain_slots": pretrainings.slots,
        "trial_train_seconds": round(trial_s, 2),
        "pretrain_seconds": round(pretrain_s, 2),
        "score_seconds": round(score_s, 2),
        "parallel_slots": slots,
        "training_fraction": round((trial_s + pretrain_s + score_s) / (wall * slots), 3),
    }
