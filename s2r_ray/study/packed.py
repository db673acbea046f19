"""A pack of fine-tuning trials (`units.Pack`, `tune.pack`) run as one Tune trial: its members
(of one cell, or of the cells that share its n and m) train as one network
(`Family.finetune_members`), each on its own cell's rows from its own cell's pretrained
network, and each stays a trial of its own: its own MLflow run and curve, its own stop at its
cell's rungs (`s2r_ray.study.halving`), its own kept network for scoring, its own Optuna
result, reported the round it ends so that the driver tells (and journals) it at once: a pack
killed in flight leaves its ended members done, and a resumed study asks again only for the
others."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ray import tune

from s2r_ray.models.base import Diverged, Family, OnEpoch, Target
from s2r_ray.protocol import Plan
from s2r_ray.study import tracking
from s2r_ray.study.pretrained import PretrainedStore
from s2r_ray.study.tracking import TrackingContext
from s2r_ray.study.units import (
    RESULT,
    KeptNetwork,
    MemberEnd,
    Pack,
    PackProgress,
    Trial,
    run_status,
)
from s2r_ray.study.workers import ray_node


def run_params(trial: Trial, device: str) -> dict:
    """A trial's MLflow params, alone or in a pack."""
    params = {**trial.hp, "seed": trial.seed, "trial_key": trial.key}
    return params | {"device": device, "ray_node": ray_node()}


@dataclass
class _Member:
    trial: Trial
    run: tracking.Curve
    kept: KeptNetwork = field(default_factory=lambda: KeptNetwork([]))
    seconds: float = 0.0  # its share of each round it trained in
    best: float = float("inf")
    status: str = ""  # how its run ends, once its end is kept
    ended: bool = False  # its run ended


class _Round:
    """The members evaluated since the last round ended, and the time not spent training
    (logging, reporting): a round's training time is shared by the members that trained in it."""

    def __init__(self) -> None:
        self.evaluated: list[int] = []
        self.epoch = 0
        self.started, self.overhead = time.perf_counter(), 0.0

    def trained(self, count: int) -> float:
        return (time.perf_counter() - self.started - self.overhead) / max(count, 1)


def run_pack(
    pack: Pack,
    plan: Plan,
    family: Family,
    ctx: TrackingContext,
    device: str,
    store: PretrainedStore,
) -> None:
    """Train the pack's members together; after each round, halve at a rung (each member
    against its own cell's values) and report the members that ended (`PackProgress`), each
    one's network and end kept first and its MLflow run ended once the report returns (the
    driver has told Optuna: a run never ends FINISHED for a trial that a resumed study would
    run again). A member that diverges leaves the pack, the others go on. Stopped by the study
    (a SystemExit out of `tune.report`) or failed, the members whose runs have not ended end
    KILLED or FAILED: the driver counts them interrupted, or failed. Run again by Tune, the
    pack reports the ends it kept at once and trains only the other members."""
    rungs = {cell: r.snapshot() for cell, r in pack.rungs.items()}
    kept = [store.load_trial(t.key) for t in pack.trials]
    ended = tuple(k.end for k in kept if k is not None and k.end is not None)
    if ended:
        tune.report({RESULT: PackProgress(ended, ())})
    done = {end.key for end in ended}
    trials = [t for t in pack.trials if t.key not in done]
    if not trials:
        return
    states = {
        t.cell.pretrain_id: store.load(t.cell.pretrain_id).state
        for t in trials
        if not t.cell.is_baseline
    }
    targets = [
        Target(*plan.target_split(t.cell), pretrained=states.get(t.cell.pretrain_id))
        for t in trials
    ]
    extra = {"pack": pack.key, "pack_size": len(pack.trials)}
    members = [
        _Member(t, tracking.open_run(ctx, t.cell, "trial", t.key, run_params(t, device) | extra))
        for t in trials
    ]
    now = _Round()

    def on_epoch(i: int) -> OnEpoch:
        def evaluated(epoch: int, val_mae: float, best: float) -> None:
            t = time.perf_counter()
            member = members[i]
            member.kept.reached, member.best, now.epoch = epoch, best, epoch
            now.evaluated.append(i)
            member.run.add({"val_mae": val_mae, "best_val_mae": best}, step=epoch)
            now.overhead += time.perf_counter() - t

        return evaluated

    def on_round(diverged: dict[int, Diverged]) -> set[int]:
        nonlocal now
        share = now.trained(len(now.evaluated) + len(diverged))
        for i in [*now.evaluated, *diverged]:
            members[i].seconds += share
        stopped: set[int] = set()
        for cell, cell_rungs in rungs.items():
            mine = [i for i in now.evaluated if members[i].trial.cell.id == cell]
            halted = cell_rungs.halve(
                now.epoch, {members[i].trial.number: members[i].best for i in mine}
            )
            stopped |= {i for i in mine if members[i].trial.number in halted}
        ending = {i: _end(members[i], now.epoch, store, error=str(e)) for i, e in diverged.items()}
        for i in now.evaluated:
            member = members[i]
            if i in stopped or now.epoch >= int(member.trial.hp["epochs"]):  # or it ran out
                ending[i] = _end(member, now.epoch, store)
        at_rung = any(now.epoch in r.milestones for r in rungs.values())
        rung_values = (
            tuple((members[i].trial.key, now.epoch, members[i].best) for i in now.evaluated)
            if at_rung
            else ()
        )
        tune.report({RESULT: PackProgress(tuple(ending.values()), rung_values)})
        for i in ending:
            members[i].run.end(members[i].status)
            members[i].ended = True
        now = _Round()  # the time blocked in Tune is not training
        return stopped

    try:
        family.finetune_members(
            targets,
            hps=[t.hp for t in trials],
            seeds=[t.seed for t in trials],
            device=device,
            on_epochs=[on_epoch(i) for i in range(len(members))],
            on_bests=[m.kept.add for m in members],
            on_round=on_round,
        )
    except BaseException as e:
        status = "KILLED" if isinstance(e, SystemExit) else "FAILED"
        for member in members:
            if not member.ended:
                member.run.end(status)
        raise


def _end(
    member: _Member, epoch: int, store: PretrainedStore, error: str | None = None
) -> MemberEnd:
    """Keep the member's network with its end, say how its run will end (stopped: at a rung
    before its last epoch), and what the driver tells Optuna."""
    stopped = not error and epoch < int(member.trial.hp["epochs"])
    member.status = run_status(stopped, failed=error is not None)
    value = None if error else member.best
    end = MemberEnd(member.trial.key, value, epoch, member.seconds, error, stopped)
    member.kept.end = end
    # a diverged member is never scored: its end alone is kept
    store.save_trial(member.trial.key, KeptNetwork([], end=end) if error else member.kept.trimmed())
    return end
