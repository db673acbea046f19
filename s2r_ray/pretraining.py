"""Pretraining as Ray work: once per (n, repetition), tracked in its own MLflow run."""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from s2r_ray import tracking
from s2r_ray.config import ConfigError, Resources, StudyConfig
from s2r_ray.folder import StudyFolder
from s2r_ray.models.base import Family, Pretrained
from s2r_ray.progress import Rate
from s2r_ray.protocol import Cell, Plan
from s2r_ray.tracking import TrackingContext
from s2r_ray.workers import setup_worker


@ray.remote
def pretrain_cell(
    plan: Plan, cell: Cell, family: Family, cfg: StudyConfig, ctx: TrackingContext
) -> Pretrained:
    """Train on the first n rows of the repetition's source permutation, stopping on the
    repetition's source hold-out (disjoint from every subset)."""
    device = setup_worker(cfg.tune.pretrain_resources.cpu)
    ds, rep = plan.dataset, plan.repetitions[cell.repetition]
    params = {
        "n": cell.n,
        "repetition": cell.repetition,
        "holdout_rows": len(rep.holdout),
        **cfg.pretrain.model_dump(),
        "model": cfg.model.model_dump(),
    }
    with tracking.nested_run(ctx, cell, "pretrain", f"pretrain {cell.pretrain_id}", params) as run:
        result = family.pretrain(
            *plan.source_split(cell),
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


FETCH_TIMEOUT_S = 10.0


class Pretrainings:
    """All pretraining of a study, and which of it has finished.

    A network a previous attempt finished is on disk and never recomputed. The rest is
    submitted at once (small n first) into a placement group of a few slots: queued as plain
    tasks it would take every CPU ahead of the trials, and a study with slow large-n pretraining
    would stall behind it; in its own group it uses only its slots, which go back to the trials
    when the last one finishes. Each network is written to the study folder by this (the
    driver's) process the moment its task ends; trials read it from there, so a node lost after
    that loses nothing.
    """

    def __init__(
        self,
        plan: Plan,
        plan_ref: ray.ObjectRef,
        family: Family,
        cfg: StudyConfig,
        ctx: TrackingContext,
        folder: StudyFolder,
        needed: list[str],
        echo: Callable[[str], None],
    ):
        self._folder, self._echo = folder, echo
        on_disk = folder.pretrained_keys()
        self.loaded = [k for k in needed if k in on_disk]
        self._done: set[str] = set(self.loaded)
        self.failed: dict[str, str] = {}
        self.refs: dict[str, ray.ObjectRef] = {}
        self.slots, self._group = 0, None
        todo = [k for k in needed if k not in on_disk]
        self._rate = Rate(len(todo), unit="pretrainings")
        if not todo:
            return
        res = cfg.tune.pretrain_resources
        self.slots = min(len(todo), cfg.tune.pretrain_slots or _default_slots(res))
        bundle = {"CPU": res.cpu} | ({"GPU": res.gpu} if res.gpu else {})
        self._group = placement_group([bundle] * self.slots, strategy="PACK")
        try:
            ray.get(self._group.ready(), timeout=cfg.tune.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.release()
            raise ConfigError(
                f"tune.pretrain_resources {bundle} x {self.slots} slots: the cluster did not "
                f"offer them within tune.placement_timeout_s={cfg.tune.placement_timeout_s:g} s"
            ) from None
        task = pretrain_cell.options(
            num_cpus=res.cpu,
            num_gpus=res.gpu,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._group),
        )
        by_key = {c.pretrain_id: c for c in plan.cells if not c.is_baseline}
        for key in todo:
            cell = by_key[key]
            self.refs[key] = task.remote(plan_ref, Cell(cell.n, cell.repetition), family, cfg, ctx)

    def ready(self, cell: Cell) -> bool:
        """Whether the cell's trials can start."""
        if not cell.is_baseline and cell.pretrain_id not in self._done:
            self.poll()
        return cell.is_baseline or cell.pretrain_id in self._done

    def error(self, cell: Cell) -> str | None:
        return None if cell.is_baseline else self.failed.get(cell.pretrain_id)

    def poll(self) -> None:
        """Save and announce every pretraining that has ended, and give the slots back as soon
        as the last one has, whichever cell the searcher happened to ask about."""
        if not self.refs:
            return
        ended, _ = ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=0)
        for key in [k for k, ref in self.refs.items() if ref in set(ended)]:
            try:
                # Bounded: this runs in Tune's loop, and a result lost with its node is rebuilt
                # by Ray in the slots, which may wait for trials that only this loop ends.
                p = ray.get(self.refs[key], timeout=FETCH_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                continue  # still arriving or being rebuilt: asked again at the next step
            except Exception as e:  # a failed pretraining fails its cells, not the study
                self.failed[key] = str(e).strip().splitlines()[-1][-300:]
                line = f"pretraining {key} FAILED: {self.failed[key]}"
            else:
                self._folder.save_pretrained(key, p)
                line = _finished_line(key, p)
            del self.refs[key]
            self._done.add(key)
            self._rate.add()
            self._echo(f"{line} | {self._rate.done}/{self._rate.total}, {self._rate.describe()}")
        if not self.refs:
            self.release()

    def release(self) -> None:
        """Give the slots back; a study that stops early cancels its pending pretrainings."""
        for ref in self.refs.values():
            ray.cancel(ref, force=True)
        self.refs.clear()
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None


def _default_slots(res: Resources) -> int:
    """Half the cluster's CPUs, and no more bundles than its GPUs can hold."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 1) // (2 * res.cpu))
    if res.gpu:
        slots = min(slots, int(total.get("GPU", 0) // res.gpu))
    return max(1, slots)


def _finished_line(key: str, p: Pretrained) -> str:
    how = "converged" if p.converged else "stopped on the step cap (pretrain.max_steps)"
    return (
        f"pretraining {key}: source hold-out MAE {p.source_val_mae:.4g} after "
        f"{p.steps} steps, {how} ({p.seconds:.0f} s)"
    )
