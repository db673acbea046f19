"""The study, top to bottom: study folder -> data -> plan -> one Tune experiment of every
pretraining, fine-tuning trial and scoring -> the reducer's live fit (and, in a steered study,
its decision of what to measure next, whose cells join the same experiment) -> report.

Pretraining runs once per (n, r), small n first, `tune.pretrain_slots` at a time (by default
more where a slot would idle); the searcher hands out only trials whose pretraining is done, so
sizes interleave with no barrier and no trial idles. One Tune scheduler hands out the cluster
and retries a job lost with its node.

The study folder (`s2r_ray.folder`) holds all a later process needs, so the same command on the
same folder resumes a killed study with the same MLflow runs. SIGTERM or SIGINT ends the runs in
flight as KILLED (a run whose work the folder already holds, as that work ended), writes the
report ("interrupted") and raises `StudyInterrupted`; any other failure ends them FAILED.
Either way Ray is shut down if this process started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TBX writers per trial
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no status tables
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # ours stops the study cleanly
# pretrainings and scorings report their result, not the trials' metric (study.units)
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

import psutil
import ray
from ray import tune
from ray._private import services
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from s2r_ray import steer
from s2r_ray.config import ConfigError, Resources, StudyConfig, UserError
from s2r_ray.data import load_dataset
from s2r_ray.folder import StudyFolder
from s2r_ray.models import make_family
from s2r_ray.models.base import Family
from s2r_ray.protocol import Plan, make_plan
from s2r_ray.render.text import decision_line
from s2r_ray.report import folder_report
from s2r_ray.study import tracking, units
from s2r_ray.study.fanout import RayPool
from s2r_ray.study.halving import Rungs
from s2r_ray.study.pretrained import ServedStore
from s2r_ray.study.pretraining import Pretrainings, default_slots
from s2r_ray.study.reducer import Reducer
from s2r_ray.study.resources import MemorySampler, share_plan, stored_bytes
from s2r_ray.study.scheduler import PerCellASHA, StudySearcher
from s2r_ray.study.tuner import CellTuner, open_journal, run_ends
from s2r_ray.study.work import run_unit

Echo = Callable[[str], None]
PENDING = "TUNE_MAX_PENDING_TRIALS_PG"
_USER_PENDING = os.environ.get(PENDING)  # else set per study from the cluster's size (_tune)


class ClusterError(UserError):
    """The Ray cluster to join does not answer."""


class StudyInterrupted(Exception):
    """SIGTERM or SIGINT stopped the study; its folder holds everything to resume it."""

    def __init__(self, signum: int, report: dict | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.report = signum, report


class _Signals:
    """SIGTERM (SLURM's warning before its time limit) or SIGINT: inside Tune's loop the first
    only sets a flag that the loop reads; outside it, or a second one, interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_tune = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous.setdefault(sig, signal.getsignal(sig))
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        if not (self.in_tune and first):
            raise StudyInterrupted(signum)


class _StopOnSignal(tune.Stopper):
    def __init__(self, signals: _Signals, searcher: StudySearcher):
        self._signals, self._searcher = signals, searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self._signals.signum is None:
            return False
        self._searcher.stop()
        return True


def init_ray(address: str | None, data_bytes: int = 0) -> bool:
    """Join the cluster at `address` or RAY_ADDRESS, else start a new local Ray whose object
    store holds the study's `data_bytes` (Ray's default, 30% of free memory, is too small for a
    10^7-row pool); returns whether this call connected (and so should shut down)."""
    if ray.is_initialized():
        return False
    if address := address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=_answering(address), logging_level=logging.WARNING)
    else:
        need = int(data_bytes * 1.25) + (512 << 20)
        fits = need <= 0.3 * psutil.virtual_memory().available
        start_local_ray(**({} if fits else {"object_store_memory": need}))
    return True


def start_local_ray(**options: object) -> None:
    """A new Ray on this machine only (never a cluster a `ray_current_cluster` file names). Ray
    binds its gRPC ports on every interface and advertises the machine's address (a loopback
    `_node_ip_address` is replaced with it), so token authentication stays on (Ray's default;
    its note about ~/.ray/auth_token is left out); no usage stats unless opted in."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        **options,
    )


def _answering(address: str) -> str:
    """The GCS address to join (`auto`: the running Ray); one that does not answer is a one-line
    error now, not a wait on a GCS that is gone."""
    if address.startswith("ray://"):
        return address
    try:
        target = services.get_ray_address_from_environment(address, None)
    except ConnectionError:
        raise ClusterError(f"--address {address}: no running Ray found on this machine") from None
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError):
        raise ClusterError(
            f"--address {address}: no Ray answers at {target}; start the cluster (ray start "
            "--head), or leave --address and RAY_ADDRESS unset for a local Ray"
        ) from None
    return target


class _Progress(tune.Callback):
    """Runs in Tune's loop: prints each cell's reducer line as soon as it is ready, and hands a
    steering decision's cells to the searcher (`on_decision`)."""

    def __init__(self, echo: Echo):
        self.pending: list[ray.ObjectRef] = []
        self.on_decision: Callable[[dict], None] = lambda decision: None
        self._echo = echo

    def __getstate__(self) -> dict:
        return {}  # live handles of this driver only; nothing to restore

    def drain(self, timeout: float | None = 0) -> None:
        while self.pending:
            ready, _ = ray.wait(self.pending, num_returns=1, timeout=timeout)
            if not ready:
                return
            self.pending.remove(ready[0])
            line, decision = ray.get(ready[0])
            if line:
                self._echo(line)
            if decision:
                self.on_decision(decision)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.drain()


def _check_resources(cfg: StudyConfig) -> None:
    """A trial or pretraining no node can hold would wait forever: say so before any work."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for field in ("resources", "pretrain_resources"):
        res = getattr(cfg.tune, field)
        if not any(r.get("CPU", 0) >= res.cpu and r.get("GPU", 0) >= res.gpu for r in nodes):
            biggest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
            raise ConfigError(
                f"tune.{field}: {{cpu: {res.cpu:g}, gpu: {res.gpu:g}}} fits on no node of the "
                f"cluster (largest: {biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs)"
            )


def _bundle(res: Resources) -> tune.PlacementGroupFactory:
    return tune.PlacementGroupFactory([{"CPU": res.cpu} | ({"GPU": res.gpu} if res.gpu else {})])


def run_study(
    cfg: StudyConfig,
    out: Path,
    *,
    address: str | None = None,
    fresh: bool = False,
    echo: Echo = print,
) -> dict:
    """Run (or resume) a whole study and return its final report (also in <out>/report.json).

    Raises `StudyInterrupted` after a clean stop on SIGTERM/SIGINT, `ConfigError` when <out>
    holds another study (`fresh` moves that one aside first)."""
    signals = _Signals()
    signals.install()
    try:
        with MemorySampler() as memory:
            return _run(cfg, Path(out).resolve(), address, fresh, echo, signals, memory)
    finally:
        signals.restore()


def _run(
    cfg: StudyConfig,
    out: Path,
    address: str | None,
    fresh: bool,
    echo: Echo,
    signals: _Signals,
    memory: MemorySampler,
) -> dict:
    start = time.time()
    # A Ray job's working directory is a temporary copy that a node starting on this machine
    # may replace under it once Ray is joined: take it (and paths relative to it) now.
    cwd = os.getcwd()
    uri = tracking.resolve_uri(cfg.tracking.uri)
    artifact_root = tracking.artifact_root(uri, cfg.tracking.artifact_location)
    folder = StudyFolder(out)
    folder.claim()
    if fresh and (moved := folder.set_aside()):
        echo(f"--fresh: the previous study in {out} moved to {moved}")
    folder.check_same_study(cfg)
    if folder.state().get("status") == "complete":
        echo(f"study {cfg.name} is already complete in {out}: nothing to run")
        return folder_report(folder)

    # on a cluster, Ray tasks featurize the tables over its nodes; else local processes do
    joined = bool(address or os.environ.get("RAY_ADDRESS")) and init_ray(address)
    if joined:  # jobs on other nodes are no processes of this one: sample each node there
        memory.watch_nodes()
    fanout = RayPool() if ray.is_initialized() else None
    ds = load_dataset(cfg.data, folder.rejected_rows_path(), executor=fanout)
    used = _data_figures(ds.counts, time.time() - start, fanout)
    plan = make_plan(cfg, ds)
    plan.cells = steer.study_cells(cfg, folder.decisions())  # a steered study's so far
    folder.write_config(cfg)
    pretrain_ids = {c.pretrain_id for c in plan.cells if not c.is_baseline}
    leak = [r.excluded_for_leakage for r in plan.repetitions]
    echo(
        f"study {cfg.name}: {len(ds.source_y)} source rows, {len(ds.target_y)} target rows, "
        f"{len(ds.feature_names)} features; {len(plan.cells)} cells x {cfg.tune.trials_per_cell} "
        f"trials, {len(pretrain_ids)} pretrainings; {max(leak)} source rows kept out as test ids"
    )
    counts = ds.counts | {
        "source_rows_excluded_as_test_ids": max(leak),
        "source_holdout_rows": len(plan.repetitions[0].holdout),
        "source_pool_rows": min(len(r.pool) for r in plan.repetitions),
    }
    state = folder.state()
    folder.update_state(
        status="running", attempts=int(state.get("attempts", 0)) + 1, attempt_started_at=start
    )

    # From here on every path is absolute and the driver works in its study folder (see above;
    # and MLflow resolves its defaults against the working directory).
    os.chdir(out)
    started_ray, ctx, reducer, status = False, None, None, "failed"
    try:
        started_ray = init_ray(address, plan.nbytes()) or joined
        signals.install()  # ray.init installs a SIGTERM handler of its own
        _check_resources(cfg)
        data = cfg.data
        dataset = (
            "synthetic"
            if data.kind == "synthetic"
            else f"{Path(data.source.path).name} -> {Path(data.target.path).name}"
        )
        ctx = tracking.start_study(
            uri,
            cfg.tracking.experiment,
            cfg.name,
            cfg.model_dump(mode="json"),
            cfg.sizes,
            {"s2r.dataset": dataset, "s2r.property": data.property},
            previous=state.get("mlflow"),
            artifacts_at=artifact_root,
        )
        folder.update_state(mlflow=tracking.ids(ctx))
        artifacts = tracking.artifact_location(ctx)
        echo(
            f"MLflow: {ctx.uri} (experiment {cfg.tracking.experiment!r}, run {ctx.study_run_id}; "
            f"artifacts in {artifacts})"
        )
        if tracking.in_ray_temp(artifacts):
            echo(
                f"warning: experiment {cfg.tracking.experiment!r} keeps its artifacts in a Ray "
                "job's temporary folder, which Ray deletes (an experiment's location is fixed "
                "when it is created): set tracking.experiment to a new name, whose artifacts go "
                "beside the store or to tracking.artifact_location"
            )
        orphans = tracking.end_orphans(ctx, lambda: _run_ends(folder))  # a killed attempt's
        if "mlflow" not in state:
            tracking.log(ctx, ctx.study_run_id, params={"counts": counts})  # rejected rows too
        extra = {
            "counts": counts,
            "mlflow": {"tracking_uri": ctx.uri, "study_run_id": ctx.study_run_id},
        }
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        reducer = Reducer.options(scheduling_strategy=here).remote(
            cfg, str(out.resolve()), ctx, dict(Counter(c.n for c in plan.cells)), extra
        )
        # a steered study's round may have ended with the last attempt; any other study does not
        # wait here for the reducer's process to start (it starts beside Tune's first actors)
        if cfg.steer is not None and (decision := ray.get(reducer.steer.remote())):
            echo(decision_line(decision))
            plan.cells += steer.decision_cells(cfg, decision)
        used["object_store_bytes"] = _tune(cfg, plan, folder, ctx, reducer, signals, orphans, echo)
        status = "interrupted" if signals.signum is not None else "complete"
        missing = len(steer.study_cells(cfg, folder.decisions())) - len(folder.ledger())
        if status == "complete" and missing:
            raise RuntimeError(f"the study ended with {missing} cells unrecorded")
    except StudyInterrupted:
        status = "interrupted"
    finally:
        wall = float(state.get("elapsed_seconds", 0.0)) + time.time() - start
        # the final report (by the reducer when there is one), then every MLflow run ended
        timing = {"wall_seconds": round(wall, 2)} | _timing(folder.ledger(), wall, cfg)
        timing |= used | memory.figures()
        if reducer is not None:
            report = ray.get(reducer.finish.remote(status, {"timing": timing}))
            ctx = ray.get(reducer.context.remote())  # with the size runs steering opened
        else:
            report = folder_report(folder, status, {"timing": timing})
        if ctx is not None:
            tracking.log(ctx, ctx.study_run_id, used | memory.figures())  # what it used
            tracking.end_orphans(ctx, lambda: _run_ends(folder))
            run_status = {"complete": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            tracking.end_study(ctx, run_status)
        folder.update_state(status=status, elapsed_seconds=round(wall, 2))
        if started_ray:
            ray.shutdown()
        with contextlib.suppress(OSError):  # a job's copy may be gone
            os.chdir(cwd)
    if status == "interrupted":
        raise StudyInterrupted(signals.signum or signal.SIGINT, report)
    return report


def _run_ends(folder: StudyFolder) -> dict[str, str]:
    """How the runs left RUNNING end, by key: as the work the study folder holds says."""
    told = run_ends(open_journal(folder.journal_path())) if folder.journal_path().exists() else {}
    return told | {key: "FINISHED" for key in folder.pretrained_keys()}


def _pretrain_pack(cfg: StudyConfig, family: Family, plan: Plan) -> int:
    """Every repetition of an n in one batch where the family measured that faster."""
    device = "cuda" if cfg.tune.pretrain_resources.gpu else "cpu"
    stacks = family.stacks_pretraining(len(plan.dataset.feature_names), device)
    return cfg.repetitions if stacks else 1


def _tune(
    cfg: StudyConfig,
    plan: Plan,
    folder: StudyFolder,
    ctx: tracking.TrackingContext,
    reducer: ray.actor.ActorHandle,
    signals: _Signals,
    orphans: int,
    echo: Echo,
) -> int | None:
    """The one Tune experiment of every pretraining, trial and scoring of the study; returns the
    bytes its shared plan takes in the object store."""
    recorded = {r["cell"] for r in folder.ledger()}
    needed = list(dict.fromkeys(c.pretrain_id for c in plan.cells if c.id not in recorded and c.n))
    plan_ref = share_plan(plan)
    family = make_family(cfg)
    slots = cfg.tune.pretrain_slots or default_slots(cfg.tune.pretrain_resources)
    borrow = cfg.tune.pretrain_slots is None  # a number set is a cap (memory, policy)
    pretrainings = Pretrainings(needed, folder.pretrained_keys(), slots, echo, borrow)
    progress = _Progress(echo)
    store = ServedStore(reducer, str(folder.path))
    journal = open_journal(folder.journal_path())

    # ASHA stops every trial that reaches its horizon: one past the longest trial, so that a
    # trial that completed all its epochs does not end KILLED
    horizon = family.max_epochs(cfg.finetune.space()) + 1
    rungs = Rungs.asha(horizon, cfg.tune.grace_period, cfg.tune.reduction_factor)
    pack = cfg.tune.pack
    if pack > 1 and not family.packs:
        raise ConfigError(f"tune.pack: model.kind {cfg.model.kind!r} cannot train trials as one")
    try:
        searcher = StudySearcher(
            plan.cells,
            recorded,
            lambda cell: CellTuner(
                cell,
                journal,
                family,
                cfg.finetune.space(),
                trials_per_cell=cfg.tune.trials_per_cell,
                startup_trials=cfg.tune.startup_trials,
                seed=cfg.seed,
            ),
            pretrainings,
            lambda record: progress.pending.append(reducer.add_cell.remote(record)),
            steered=cfg.steer is not None and not steer.stopped(folder.decisions()),
            poll=progress.drain,
            pack=pack,
            rungs=rungs,
            pretrain_pack=cfg.tune.pretrain_pack or _pretrain_pack(cfg, family, plan),
        )
        progress.on_decision = lambda decision: searcher.steer(steer.decision_cells(cfg, decision))
        if recorded or pretrainings.loaded or searcher.partly_tuned or orphans:
            echo(
                f"resuming: {len(recorded)}/{len(plan.cells)} cells done, "
                f"{len(pretrainings.loaded)} pretrainings on disk, {searcher.partly_tuned} cells "
                f"partly tuned; {orphans} runs the stopped attempt left open ended"
            )
        # Tune keeps one trial pending for a custom searcher, and gives it the first actor that
        # frees up, killing the one still starting for it: with units shorter than an actor's
        # start (~3 s of imports), the demo ran its first 35 s on one of its two CPUs. With a
        # pending unit per slot and one more, a freed actor mostly takes a unit whose actor
        # is not yet starting (the full demo: 1.9 of 2 CPUs busy from its first seconds).
        # More pending units leave more cached actors on a node that dies; a pretraining or
        # scoring that Tune then gives up on is handed out again (`scheduler.REQUEUES`).
        slots = ray.cluster_resources().get("CPU", 1) / cfg.tune.resources.cpu
        os.environ[PENDING] = _USER_PENDING or str(int(slots) + 1)
        trial, pretraining = _bundle(cfg.tune.resources), _bundle(cfg.tune.pretrain_resources)
        trainable = tune.with_resources(
            tune.with_parameters(
                run_unit,
                plan=plan_ref,
                store=store,
                family=family,
                cfg=cfg,
                ctx=ctx,
                rungs=rungs.milestones,
            ),
            lambda c: pretraining if isinstance(units.from_config(c), units.Pretraining) else trial,
        )
        attempt = folder.state().get("attempts", 1)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=PerCellASHA(horizon, cfg.tune.grace_period, cfg.tune.reduction_factor),
                num_samples=-1,  # the searcher says when every cell is done
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"attempt-{attempt}",
                storage_path=str(folder.tune_path()),
                verbose=0,
                callbacks=[progress],
                stop=_StopOnSignal(signals, searcher),
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            ),
        )
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        signals.in_tune = True
        try:
            tuner.fit()  # trial metrics live in the ledger and MLflow, not Tune's result files
        finally:
            signals.in_tune = False
        searcher.stop()  # trials Tune stopped on a signal count as interrupted
    finally:
        progress.drain(timeout=None)
    return stored_bytes(plan_ref)


def _data_figures(
    counts: dict[str, int], seconds: float, fanout: RayPool | None
) -> dict[str, float | None]:
    """How long the data took, how fast featurization went, on how many nodes."""
    keys = sum(counts.get(f"{side}_keys_featurized", 0) for side in ("source", "target"))
    ms = sum(counts.get(f"{side}_featurize_ms", 0) for side in ("source", "target"))
    return {
        "data_seconds": round(seconds, 2),
        "featurized_rows": keys,
        "featurize_rows_per_s": round(1000 * keys / ms) if keys and ms else None,
        "featurize_nodes": len(fanout.rows_by_node) if fanout is not None else 1,
    }


def _timing(records: list[dict], wall: float, cfg: StudyConfig) -> dict:
    """Where the wall time went: training inside trials, pretraining and scoring versus the rest
    (process start-up, scheduling, logging, waiting)."""
    ok = [r for r in records if r.get("status") == "ok"]
    trial_s = sum(r.get("trial_seconds", 0.0) for r in ok)
    per_pretraining = {(r["n"], r["repetition"]): r.get("pretrain_seconds", 0.0) for r in ok}
    pretrain_s = sum(per_pretraining.values())
    score_s = sum(r.get("score_seconds", 0.0) for r in ok)
    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
    slots = max(1.0, float(cpus) / cfg.tune.resources.cpu)
    return {
        "trials": sum(r.get("trials", 0) for r in records),
        "pretrainings": len([k for k in per_pretraining if k[0]]),
        "trial_train_seconds": round(trial_s, 2),
        "pretrain_seconds": round(pretrain_s, 2),
        "score_seconds": round(score_s, 2),
        "parallel_slots": slots,
        "training_fraction": round((trial_s + pretrain_s + score_s) / (wall * slots), 3),
    }
