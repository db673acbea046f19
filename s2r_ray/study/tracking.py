"""MLflow, in one place: the run hierarchy (study / size / pretraining + trials), names and tags.

Every process talks to the store through an explicit `MlflowClient` and run ids, never the global
active run, so jobs in reused trial actors and the reducer can log side by side. Swapping
MLflow for another tracker touches this file only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mlflow.entities import Experiment, Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from s2r_ray.protocol import Cell, size_key
from s2r_ray.render import notes

# Over HTTP, MLflow prints two lines to stdout for every run that ends: a study has thousands
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
SQLITE = "sqlite:///"
DEFAULT_URI = SQLITE + "mlruns.db"
_MAX_PARAM = 6000
_MAX_TAG = 8000  # MLflow truncates (or refuses) a longer run tag
NOTE = "mlflow.note.content"  # a run's or experiment's description in the UI
# MLflow's model-training experiment kind (mlflow/server/js: CUSTOM_MODEL_DEVELOPMENT): UI
# versions that honour it open the experiment on its runs instead of the GenAI trace overview
KIND_TAG, TRAINING = "mlflow.experimentKind", "custom_model_development"
KEY_TAG = "s2r.key"  # a trial's or pretraining's key: what the study folder knows it by
HEADLINE = "s2r.headline"  # the study's state and fit in one line, for the experiment's table
CURVE_EVERY_S = 10.0  # how often a running trial's curve reaches the store (`Curve`)


def resolve_uri(configured: str | None) -> str:
    """Config beats $MLFLOW_TRACKING_URI beats ./mlruns.db; a relative SQLite path becomes
    absolute: Ray workers do not share the driver's working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = SQLITE + str(Path(uri.removeprefix(SQLITE)).resolve())
    return uri


def artifact_root(uri: str, configured: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: the config's location, else beside a SQLite
    store, never MLflow's ./mlruns (in a Ray job, a temporary copy Ray deletes); None: a tracking
    server chooses."""
    if configured:
        return configured if "://" in configured else str(Path(configured).expanduser().resolve())
    return (
        str(Path(uri.removeprefix(SQLITE)).parent / "mlartifacts")
        if uri.startswith(SQLITE)
        else None
    )


def in_ray_temp(location: str) -> bool:
    """Whether an artifact location lies in a Ray job's unpacked working directory."""
    return "/runtime_resources/" in location or "/_ray_pkg_" in location


@cache
def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class TrackingContext:
    """What a worker needs to log into the right place; small and picklable."""

    uri: str
    experiment_id: str
    study_run_id: str
    size_run_ids: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> MlflowClient:
        return _client(self.uri)

    def cell_tags(self, cell: Cell, kind: str) -> dict[str, str]:
        return {
            **self.tags,
            "s2r.kind": kind,
            "s2r.n": str(cell.n),
            "s2r.m": "all" if cell.m is None else str(cell.m),
            "s2r.repetition": str(cell.repetition),
            "s2r.cell": cell.id,
        }

    def size_run(self, n: int) -> str:
        """The size's run; one that steering opened after this context was shipped to a worker
        is looked up once by its tags."""
        key = size_key(n)
        if key not in self.size_run_ids:
            query = (
                f"tags.mlflow.parentRunId = '{self.study_run_id}' and tags.`s2r.kind` = 'size' "
                f"and tags.`s2r.n` = '{n}'"
            )
            runs = self.client.search_runs([self.experiment_id], query, max_results=1)
            if not runs:
                raise KeyError(f"no MLflow run of {key} under study run {self.study_run_id}")
            self.size_run_ids[key] = runs[0].info.run_id
        return self.size_run_ids[key]


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:_MAX_PARAM]
    return out


def create_run(ctx: TrackingContext, parent: str | None, name: str, tags: dict[str, str]) -> str:
    tags = dict(tags)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = ctx.client.create_run(ctx.experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def log(
    ctx: TrackingContext,
    run_id: str,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    step: int = 0,
) -> None:
    """One batched call: the SQLite store costs a round trip per call, not per value."""
    ms = _metrics(metrics or {}, step)
    ps = [Param(k, v) for k, v in _flat(params or {}).items()]
    if ms or ps:
        ctx.client.log_batch(run_id, metrics=ms, params=ps)


def _metrics(metrics: dict[str, float], step: int) -> list[Metric]:
    """Stamped now; None and NaN dropped: MLflow charts cannot show them."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and v == v]


class Curve:
    """A run's per-epoch metrics, each stamped when its epoch ended, sent once `every_s` seconds
    have passed since the last send and when the run ends (`end`). A store round trip costs more
    than an epoch of a small network (py-spy of the demo's trial actors: half of their CPU went
    into one `log_batch` per epoch, twice the training steps), and the UI's live curve only needs
    to move every few seconds."""

    def __init__(self, ctx: TrackingContext, run_id: str, every_s: float = CURVE_EVERY_S):
        self.ctx, self.run_id, self.every_s = ctx, run_id, every_s
        self._pending: list[Metric] = []
        self._sent = time.monotonic()

    def add(self, metrics: dict[str, float], step: int) -> None:
        self._pending += _metrics(metrics, step)
        if time.monotonic() - self._sent >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.ctx.client.log_batch(self.run_id, metrics=self._pending)
        self._pending, self._sent = [], time.monotonic()

    def end(self, status: str = "FINISHED") -> None:
        """What is pending, then the run's end: a run never ends with its curve short."""
        self.flush()
        end(self.ctx, self.run_id, status)


def log_curve(ctx: TrackingContext, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    now = int(time.time() * 1000)
    ctx.client.log_batch(run_id, metrics=[Metric(key, float(v), now, int(s)) for s, v in points])


def end(ctx: TrackingContext, run_id: str, status: str = "FINISHED") -> None:
    ctx.client.set_terminated(run_id, status)


def log_artifacts(ctx: TrackingContext, run_id: str, paths: list[Path]) -> None:
    for p in paths:
        ctx.client.log_artifact(run_id, str(p))


def start_study(
    uri: str,
    experiment: str,
    study: str,
    config: dict[str, Any],
    sizes: list[int],
    tags: dict[str, str],
    previous: dict[str, Any] | None = None,
    artifacts_at: str | None = None,
) -> TrackingContext:
    """The study run and one child run per size (and the baseline), created before any trial so
    that jobs on any node nest under them; a new experiment keeps its artifacts at `artifacts_at`
    (default `artifact_root(uri)`). `previous` (the ids a stopped attempt stored) resumes those
    runs instead, the unfinished set back to RUNNING: one study run however often restarted."""
    client, base = _client(uri), {"s2r.study": study, **tags}
    if previous and previous.get("uri") == uri:
        _mark_training(client, client.get_experiment(previous["experiment_id"]))
        ctx = TrackingContext(
            uri,
            previous["experiment_id"],
            previous["study_run_id"],
            previous["size_run_ids"],
            {**base, notes.STUDY_RUN_TAG: previous["study_run_id"]},
        )
        for run_id in [ctx.study_run_id, *ctx.size_run_ids.values()]:
            if client.get_run(run_id).info.status != "FINISHED":
                client.update_run(run_id, status="RUNNING")
        return ctx
    if (exp := client.get_experiment_by_name(experiment)) is None:
        exp_id = client.create_experiment(
            experiment, artifacts_at or artifact_root(uri), tags={KIND_TAG: TRAINING}
        )
    else:
        exp_id = exp.experiment_id
        _mark_training(client, exp)
    ctx = TrackingContext(uri, exp_id, "", {}, base)
    study_id = create_run(ctx, None, study, {**base, "s2r.kind": "study"})
    client.set_tag(study_id, notes.STUDY_RUN_TAG, study_id)
    log(ctx, study_id, params=config)
    base = {**base, notes.STUDY_RUN_TAG: study_id}
    ctx = TrackingContext(uri, exp_id, study_id, {}, base)
    for n in [0, *sizes]:
        open_size(ctx, study, n)
    describe_experiment(ctx)
    return ctx


def open_size(ctx: TrackingContext, study: str, n: int) -> bool:
    """The size's run, RUNNING under the study run: created (returns True) or, for a size that
    steering measures again, reopened."""
    key = size_key(n)
    if key in ctx.size_run_ids:
        ctx.client.update_run(ctx.size_run_ids[key], status="RUNNING")
        return False
    tags = {**ctx.tags, "s2r.kind": "size", "s2r.n": str(n)}
    name = notes.size_run_name(study, n)
    ctx.size_run_ids[key] = create_run(ctx, ctx.study_run_id, name, tags)
    return True


def log_decision(ctx: TrackingContext, decision: dict) -> None:
    """A steering decision on the study run: the goal's interval as metrics stepped by decision,
    the latest decision as a tag (the full list is steering.jsonl, an artifact at the end)."""
    before = decision.get("before") or {}
    metrics = {f"steer_goal_{k}": before.get(k) for k in ("point", "lo", "hi", "width")} | {
        "steer_cells_used": decision["budget"]["cells_used"]
    }
    metrics["steer_spent_seconds"] = decision["budget"]["spent_seconds"]
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    log(ctx, ctx.study_run_id, metrics, step=decision["index"])
    what = f"measure n={decision['n']} x{decision['repetitions']}"
    if decision["action"] == "stop":
        what = f"stop ({decision['stop_reason']})"
    ctx.client.set_tag(
        ctx.study_run_id, "s2r.steering", f"{decision['index']}: {what}: {decision['reason']}"
    )


def artifact_location(ctx: TrackingContext) -> str:
    """Where the study's experiment keeps artifacts (fixed when the experiment was created)."""
    return ctx.client.get_experiment(ctx.experiment_id).artifact_location


def _mark_training(client: MlflowClient, exp: Experiment) -> None:
    """Tag an experiment created before s2r set its kind; one that has a kind keeps it."""
    if KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING)


def describe_study(ctx: TrackingContext, report: dict, plots: list[str]) -> None:
    """The study run's description (what the study found; `plots`: its logged images) and its
    headline, then the experiment's table of studies."""
    note = notes.study_note(report, ctx.experiment_id, ctx.study_run_id, plots)
    tags = [RunTag(NOTE, note[:_MAX_TAG]), RunTag(HEADLINE, notes.headline(report))]
    ctx.client.log_batch(ctx.study_run_id, tags=tags)
    describe_experiment(ctx)


def describe_experiment(ctx: TrackingContext) -> None:
    """The experiment's description: its newest studies, rebuilt from the study runs so that
    studies logging side by side keep each other's rows; one a person wrote is left alone."""
    current = ctx.client.get_experiment(ctx.experiment_id).tags.get(NOTE, "")
    if current and not current.startswith(notes.EXPERIMENT_NOTE_START):
        return
    runs = ctx.client.search_runs(
        [ctx.experiment_id],
        notes.STUDIES_FILTER,
        max_results=notes.NEWEST_STUDIES,
        order_by=["attributes.start_time DESC"],
    )
    rows = [
        notes.StudyRow(
            r.info.run_name,
            r.info.run_id,
            r.info.start_time,
            r.data.tags.get(HEADLINE, r.info.status.lower()),
        )
        for r in runs
    ]
    ctx.client.set_experiment_tag(
        ctx.experiment_id, NOTE, notes.experiment_note(ctx.experiment_id, rows)
    )


def close_size(
    ctx: TrackingContext, study: str, n: int, summary: dict, records: list[dict]
) -> None:
    """Size n's last cell arrived: its summary as metrics, the trials its cells selected (the
    ones their scoring rebuilt and tested) tagged for search, its description written, its run
    ended."""
    gain = summary.get("paired_gain") or {}
    ci = summary.get("test_mae_ci90") or (None, None)
    gain_ci = gain.get("ci90") or (None, None)
    converged = summary.get("pretrain_converged")
    metrics = {
        "test_mae_mean": summary.get("test_mae_mean"),
        "test_mae_ci90_lo": ci[0],
        "test_mae_ci90_hi": ci[1],
        "test_rmse_mean": summary.get("test_rmse_mean"),
        "single_model_mae_mean": summary.get("single_mae_mean"),
        "paired_gain_mean": gain.get("mean"),
        "paired_gain_ci90_lo": gain_ci[0],
        "paired_gain_ci90_hi": gain_ci[1],
        "paired_gain_wins": gain.get("wins"),
        "source_val_mae": summary.get("source_val_mae"),
        "pretrain_converged": None if converged is None else float(converged),
        "zero_shot_mae": summary.get("zero_shot_mae"),
    }
    log(ctx, ctx.size_run(n), metrics)
    runs = ctx.client.search_runs(
        [ctx.experiment_id],
        f"tags.mlflow.parentRunId = '{ctx.size_run(n)}' and tags.`s2r.kind` = 'trial'"
        " and attributes.status != 'FAILED'",
        max_results=5000,
    )
    found = {r.data.params.get("trial_key"): r.info.run_id for r in runs}
    keys = [r["best_trial"] for r in records if r.get("best_trial")]
    selected = {key: found[key] for key in keys if key in found}
    for run_id in selected.values():
        ctx.client.set_tag(run_id, notes.SELECTED_TAG, "true")
    note = notes.size_note(
        study, n, summary, records, ctx.experiment_id, ctx.study_run_id, selected
    )
    ctx.client.set_tag(ctx.size_run(n), NOTE, note[:_MAX_TAG])
    end(ctx, ctx.size_run(n))


def ids(ctx: TrackingContext) -> dict[str, Any]:
    """What the study folder keeps so that a later process resumes the same runs."""
    return {k: v for k, v in asdict(ctx).items() if k != "tags"}


def end_orphans(
    ctx: TrackingContext, ends: Callable[[], Mapping[str, str]], status: str = "KILLED"
) -> int:
    """End the trial and pretraining runs still RUNNING under this study's size runs (a killed
    process cannot end its own), each `status`; returns how many. A run whose work the study
    folder holds (`ends()`, by key, read only when a run is left: a pretraining on disk, a
    trial the journal counts) ends as that work did: its process was killed between keeping the
    work and ending the run. Of a key's runs, only one holds its work: one its process ended,
    else the newest."""
    orphans = [
        run
        for size_run in ctx.size_run_ids.values()
        for run in ctx.client.search_runs(
            [ctx.experiment_id],
            f"tags.mlflow.parentRunId = '{size_run}' and attributes.status = 'RUNNING'",
            max_results=5000,
        )
    ]
    held, seen = ends() if orphans else {}, set()
    for run in sorted(orphans, key=lambda r: r.info.start_time, reverse=True):
        key = run.data.tags.get(KEY_TAG, "")
        holds = key in held and key not in seen and not _ended_run(ctx, run, key)
        seen.add(key)
        end(ctx, run.info.run_id, held[key] if holds else status)
    return len(orphans)


def _ended_run(ctx: TrackingContext, orphan: Run, key: str) -> bool:
    """Whether a run of the same key beside `orphan` was ended by its process."""
    parent = orphan.data.tags["mlflow.parentRunId"]
    query = (
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{KEY_TAG}` = '{key}' "
        "and attributes.status != 'RUNNING'"
    )
    return bool(ctx.client.search_runs([ctx.experiment_id], query, max_results=1))


def end_study(ctx: TrackingContext, status: str) -> None:
    """End the study run and every size run still open with the study's status."""
    for run_id in [*ctx.size_run_ids.values(), ctx.study_run_id]:
        if ctx.client.get_run(run_id).info.status == "RUNNING":
            end(ctx, run_id, status)


def open_run(
    ctx: TrackingContext, cell: Cell, kind: str, name: str, params: dict[str, Any]
) -> Curve:
    """A run under the cell's size run, its `params` logged, to `end` by its owner through its
    curve; named for people from the cell, tagged with its key (`name`: a trial's ends in its
    number)."""
    label = notes.run_name(kind, cell.n, cell.m, cell.repetition, name)
    tags = ctx.cell_tags(cell, kind) | {KEY_TAG: name}
    run_id = create_run(ctx, ctx.size_run(cell.n), label, tags)
    log(ctx, run_id, params=params)
    return Curve(ctx, run_id)


@contextmanager
def nested_run(
    ctx: TrackingContext, cell: Cell, kind: str, name: str, params: dict[str, Any]
) -> Iterator[Curve]:
    """A run under the cell's size run that ends FINISHED, KILLED (stopped early) or FAILED,
    its curve sent first."""
    curve = open_run(ctx, cell, kind, name, params)
    status = "FAILED"
    try:
        yield curve
        status = "FINISHED"
    except SystemExit:
        status = "KILLED"  # Tune stops a trial by raising SystemExit in its thread
        raise
    finally:
        curve.end(status)
