"""Scoring a finished cell: rebuild the selected trial's model, evaluate it once on test.

The cell record made here is what the ledger, the reducer and the report all read.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from s2r_ray.models.base import Family, Pretrained, mae, rmse
from s2r_ray.protocol import Cell, Plan


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class Selected(Protocol):
    """The trial a cell's tuning selected: what scoring needs to rebuild its model."""

    cell: Cell
    trial_key: str
    seed: int
    hp: dict
    stop_epoch: int | None
    selection_val_mae: float


def failed_record(cell: Cell, error: str) -> dict:
    return {"cell": cell.id, **cell.to_dict(), "status": "failed", "error": error}


def score_cell(
    plan: Plan,
    selected: Selected,
    pretrained: Pretrained | None,
    family: Family,
    ensemble: int,
    device: str,
) -> dict:
    """The cell's result record: test MAE/RMSE of the selected configuration (averaged over
    `ensemble` seeds, the first being the trial's own), the zero-shot error of the
    pretrained model, and the simulation-alone error on the same test rows."""
    start = time.perf_counter()
    cell = selected.cell
    ds, rep = plan.dataset, plan.repetitions[cell.repetition]
    X_test, y_test = ds.target_X[rep.test], ds.target_y[rep.test]
    state = pretrained.state if pretrained is not None else None
    preds, val = [], None
    for i in range(ensemble):
        ft = family.finetune(
            *plan.target_split(cell),
            hp=selected.hp,
            seed=selected.seed + i,
            stop_epoch=selected.stop_epoch,
            pretrained=state,
            device=device,
        )
        preds.append(ft.predictor.predict(X_test, device))
        val = ft.best_val_mae if val is None else val
    ensemble = np.mean(preds, axis=0)
    record = {
        "cell": cell.id,
        **cell.to_dict(),
        "status": "ok",
        "device": device,
        "mae": mae(y_test, ensemble),
        "rmse": rmse(y_test, ensemble),
        "single_mae": mae(y_test, preds[0]),
        "val_mae": val,
        "selection_val_mae": selected.selection_val_mae,
        "best_trial": selected.trial_key,
        "best_hp": selected.hp,
        "test_rows": len(rep.test),
        "train_rows": len(rep.target_train(cell.m)),
    }
    ref = ds.target_reference[rep.test] if ds.target_reference is not None else np.array([np.nan])
    has_ref = np.isfinite(ref)
    record["reference_rows"] = int(has_ref.sum())
    record["reference_mae"] = mae(y_test[has_ref], ref[has_ref]) if has_ref.any() else None
    if pretrained is not None:
        zero = family.load(state).predict(X_test, device)
        record |= {
            "zero_shot_mae": mae(y_test, zero),
            "source_val_mae": _finite(pretrained.source_val_mae),
            "pretrain_converged": pretrained.converged,
            "pretrain_steps": pretrained.steps,
            "pretrain_seconds": pretrained.seconds,
        }
    record["score_seconds"] = time.perf_counter() - start
    return record
