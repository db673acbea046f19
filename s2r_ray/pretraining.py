"""Pretraining as Ray work: once per (n, repetition), tracked in its own MLflow run."""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

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


class Pretrainings:
    """All pretraining tasks of a study, submitted at once (small n first) into a placement
    group of a few slots, and which of them have finished.

    Queued as plain tasks they would take every CPU ahead of the trials, and a study with slow
    large-n pretraining would stall behind them; in their own group they use only its slots,
    which go back to the trials when the last one finishes.
    """

    def __init__(
        self,
        plan: Plan,
        plan_ref: ray.ObjectRef,
        cfg: StudyConfig,
        ctx: TrackingContext,
        echo: Callable[[str], None],
    ):
        res = cfg.tune.pretrain_resources
        slots = cfg.tune.pretrain_slots or max(
            1, int(ray.cluster_resources().get("CPU", 1) // (2 * res.cpu))
        )
        bundle = {"CPU": res.cpu} | ({"GPU": res.gpu} if res.gpu else {})
        self._group = placement_group([bundle] * slots, strategy="PACK")
        ray.get(self._group.ready())
        task = pretrain_cell.options(
            num_cpus=res.cpu,
            num_gpus=res.gpu,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._group),
        )
        self.refs: dict[str, ray.ObjectRef] = {}
        for cell in plan.cells:
            if not cell.is_baseline and cell.pretrain_id not in self.refs:
                self.refs[cell.pretrain_id] = task.remote(
                    plan_ref, Cell(cell.n, cell.repetition), cfg, ctx
                )
        self._done: set[str] = set()
        self._echo = echo
        self.slots = slots

    def ready(self, cell: Cell) -> bool:
        """Whether the cell's trials can start."""
        if not cell.is_baseline and cell.pretrain_id not in self._done:
            self.poll()
        return cell.is_baseline or cell.pretrain_id in self._done

    def poll(self) -> None:
        """Note every pretraining that has finished (announcing it), and give the slots back
        as soon as the last one has, whichever cell the searcher happened to ask about."""
        pending = [key for key in self.refs if key not in self._done]
        if not pending:
            return
        finished = set(
            ray.wait([self.refs[k] for k in pending], num_returns=len(pending), timeout=0)[0]
        )
        for key in pending:
            if self.refs[key] in finished:
                self._done.add(key)
                self._echo(_finished_line(key, self.refs[key]))
        if len(self._done) == len(self.refs):
            self.release()

    def release(self) -> None:
        """Give the slots back; a study that stops early cancels its pending pretrainings."""
        if self._group is None:
            return
        for key, ref in self.refs.items():
            if key not in self._done:
                ray.cancel(ref, force=True)
        remove_placement_group(self._group)
        self._group = None


def _finished_line(key: str, ref: ray.ObjectRef) -> str:
    try:
        p = ray.get(ref)
    except Exception as e:  # its trials fail too, and the cell is recorded as failed
        return f"pretraining {key} FAILED: {str(e)[-300:]}"
    how = "converged" if p.converged else "stopped on the step cap (pretrain.max_steps)"
    return (
        f"pretraining {key}: source hold-out MAE {p.source_val_mae:.4g} after "
        f"{p.steps} steps, {how} ({p.seconds:.0f} s)"
    )
