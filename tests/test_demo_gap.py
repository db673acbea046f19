"""The demo's synthetic pair leaves a transfer gap that its size grid resolves.

The demo exists to show the paper's central quantities: a gap C > 0 and the equivalent
experimental sample size. Whether its data can show them is a property of the pair, the splits
and the model, not of Ray or the tuner, so this check runs the demo's own plan (its data,
splits, nested subsets, target sizes and pretraining recipe) with one fixed fine-tuning
configuration from the demo's search space instead of a tuned search: deterministic, and about
a quarter of the demo's cost (~40 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from s2r_ray.cli import summary_text
from s2r_ray.config import StudyConfig, load_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.models import make_family
from s2r_ray.models.base import Family, mae
from s2r_ray.protocol import Cell, Plan, make_plan
from s2r_ray.report import build_report

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SIZES = [100, 300, 1000, 3000]  # the demo's sizes without the costliest, 10000
HP = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 40, "batch_size": 32, "freeze": 0, "dropout": 0.0}


def _cell_mae(plan: Plan, family: Family, cell: Cell, state: dict | None) -> float:
    """Fine-tune the cell's m target rows from `state` (None: from scratch); test MAE."""
    X, y, X_val, y_val = plan.target_split(cell)
    model = family.finetune(X, y, X_val, y_val, hp=HP, seed=cell.repetition, pretrained=state)
    test = plan.repetitions[cell.repetition].test
    return mae(plan.dataset.target_y[test], model.predictor.predict(plan.dataset.target_X[test]))


def _cells(plan: Plan, cfg: StudyConfig) -> pd.DataFrame:
    """One row (n, m, repetition, mae) per cell; one pretraining per (n, repetition)."""
    family, rows = make_family(cfg), []
    for r in range(cfg.repetitions):
        for n in [0, *cfg.sizes]:
            state = family.pretrain(*plan.source_split(Cell(n, r)), seed=r).state if n else None
            for m in cfg.target_sizes:
                rows.append((n, m, r, _cell_mae(plan, family, Cell(n, r, m), state)))
    return pd.DataFrame(rows, columns=["n", "m", "repetition", "mae"])


@pytest.fixture(scope="module")
def report() -> dict:
    torch.set_num_threads(1)
    cfg = load_config(DEMO, [f"sizes={SIZES}"])
    plan = make_plan(cfg, make_synthetic(cfg.data.synthetic))
    return build_report(
        _cells(plan, cfg), study="demo-gap", status="complete", n_boot=cfg.report.n_boot
    )


def test_the_demo_varies_the_experimental_size() -> None:
    cfg = load_config(DEMO)
    assert cfg.target_sizes is not None and len(cfg.target_sizes) >= 3
    assert cfg.data.synthetic.missing > 0


def test_the_gap_C_is_resolved_above_zero(report: dict) -> None:
    fit = report["fit"]
    assert fit["m"] == max(load_config(DEMO).target_sizes)
    assert fit["C"] > 0 and fit["C_ci90"][0] > 0, fit
    assert not {"C_at_bound", "C_indistinguishable_from_zero"} & {
        d["code"] for d in report["diagnostics"]
    }


def test_equivalent_sample_sizes_come_with_intervals(report: dict) -> None:
    eq = report["equivalent_samples"]
    assert [p["n"] for p in eq["points"]] == SIZES
    for p in eq["points"]:
        assert p["m_eq_ci90"] is not None and len(p["m_eq_ci90"]) == 2, p
    smallest = eq["points"][0]  # the mildest extrapolation of E0(m) beyond the largest m
    assert isinstance(smallest["m_eq"], float) and smallest["m_eq"] > eq["m_ref"]


def test_the_summary_says_what_a_simulated_row_is_worth(report: dict) -> None:
    text = summary_text(report)
    assert "transfer gap C by m" in text and "no pretraining: E0(m) =" in text
    assert "at n = 100: one simulated row is worth" in text, text
