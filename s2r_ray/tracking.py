"""MLflow, in one place: the run hierarchy (study / size / pretraining + trials), names and tags.

Every process talks to the store through an explicit `MlflowClient` and run ids, never the global
active run, so trials in reused actors, Ray tasks and the reducer can log side by side. Swapping
MLflow for another tracker touches this file only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from s2r_ray.protocol import Cell

DEFAULT_URI = "sqlite:///mlruns.db"
_MAX_PARAM = 6000


def resolve_uri(configured: str | None) -> str:
    """Config beats $MLFLOW_TRACKING_URI beats ./mlruns.db; relative SQLite paths become absolute
    because Ray workers do not share the driver's working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


@cache
def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def size_key(n: int) -> str:
    return "baseline" if n == 0 else f"n={n}"


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
        return self.size_run_ids[size_key(n)]


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
    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, step)
        for k, v in (metrics or {}).items()
        if v is not None and v == v  # drop None and NaN: MLflow charts cannot show them
    ]
    ps = [Param(k, v) for k, v in _flat(params or {}).items()]
    if ms or ps:
        ctx.client.log_batch(run_id, metrics=ms, params=ps)


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
) -> TrackingContext:
    """The study run and one child run per size (and the baseline), created before any trial so
    that trials and pretraining can nest under them from any node."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    base = {"s2r.study": study, **tags}
    ctx = TrackingContext(uri, exp_id, "", {}, base)
    study_id = create_run(ctx, None, study, {**base, "s2r.kind": "study"})
    log(ctx, study_id, params=config)
    size_ids = {
        size_key(n): create_run(
            ctx, study_id, f"{study} {size_key(n)}", {**base, "s2r.kind": "size", "s2r.n": str(n)}
        )
        for n in [0, *sizes]
    }
    return TrackingContext(uri, exp_id, study_id, size_ids, base)


@contextmanager
def nested_run(
    ctx: TrackingContext, cell: Cell, kind: str, name: str, params: dict[str, Any]
) -> Iterator[str]:
    """A run under the cell's size run that ends FINISHED, KILLED (stopped early) or FAILED."""
    run_id = create_run(ctx, ctx.size_run(cell.n), name, ctx.cell_tags(cell, kind))
    log(ctx, run_id, params=params)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except SystemExit:
        status = "KILLED"  # Tune stops a trial by raising SystemExit in its thread
        raise
    finally:
        end(ctx, run_id, status)
