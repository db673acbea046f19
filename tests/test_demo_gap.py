"""The demo's synthetic pair leaves a transfer gap that its size grid resolves.

The demo exists to show the paper's central quantities: a gap C > 0 and the equivalent
experimental sample size. Whether its data can show them is a property of the pair, the splits
and the model, not of Ray or the tuner, so this check runs the demo's own plan (its data,
splits, nested subsets, target sizes and pretraining recipe) with one fixed fine-tuning
configuration from the demo's search space instead of a tuned search: deterministic, and about
a quarter of the demo's cost (~40 s on 2 cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from s2r_ray.config import StudyConfig, load_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.models import make_family
from s2r_ray.models.base import Family, mae
from s2r_ray.protocol import Cell, Plan, make_plan
from s2r_ray.render.text import summary_text
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


def _m_eq_by_hand(eq: dict, mae: float) -> float | None:
    """Solve E0(m) = D0 m^-beta + C0 = mae for m on the report's baseline curve; None where
    mae is at or below the floor C0 (no m reaches it)."""
    b = eq["baseline_curve"]
    gap = mae - b["C0"]
    return (b["D0"] / gap) ** (1 / b["beta"]) if gap > 0 else None


def test_equivalent_sample_sizes_come_with_intervals(report: dict) -> None:
    eq, m_values = report["equivalent_samples"], load_config(DEMO).target_sizes
    assert eq["m_ref"] == max(m_values) and eq["baseline_curve"]["m_used"] == m_values
    # the baseline curve is the one the n = 0 cells trace (a 3-parameter fit to their means)
    b = eq["baseline_curve"]
    for row in report["baseline_by_m"]:
        e0 = b["D0"] * row["m"] ** -b["beta"] + b["C0"]
        assert e0 == pytest.approx(row["test_mae_mean"], abs=0.03), (row, b)
    # each point: the pretrained MAE at (n, m_ref), and the m where E0 reaches it
    means = {s["n"]: s["test_mae_mean"] for s in report["sizes"] if s["m"] == eq["m_ref"]}
    assert [p["n"] for p in eq["points"]] == SIZES
    for p in eq["points"]:
        assert p["mae"] == pytest.approx(means[p["n"]], rel=1e-9), p
        m_eq = _m_eq_by_hand(eq, p["mae"])
        assert m_eq is not None and p["m_eq"] == pytest.approx(m_eq, rel=1e-6), (p, m_eq)
        assert p["gain_factor"] == pytest.approx(m_eq / eq["m_ref"], rel=1e-6), p
        assert p["extrapolated"] == (m_eq > max(m_values)), p
        lo, hi = p["m_eq_ci90"]
        assert lo <= p["m_eq"] <= hi, p
    # the growth rate is the slope of log m_eq against log n
    logs = np.log([[p["n"], p["m_eq"]] for p in eq["points"]])
    assert eq["growth_rate"] == pytest.approx(np.polyfit(logs[:, 0], logs[:, 1], 1)[0], rel=1e-6)
    lo, hi = eq["growth_rate_ci90"]
    assert 0 < lo <= eq["growth_rate"] <= hi, eq  # more simulated rows are worth more
    smallest = eq["points"][0]  # the mildest extrapolation of E0(m) beyond the largest m
    assert isinstance(smallest["m_eq"], float) and smallest["m_eq"] > eq["m_ref"]


WORTH = re.compile(
    r"at n = ([\d,]+): one simulated row is worth (\S+) \[(\S+), (\S+)\] experimental rows "
    r"\(no pretraining needs m = (\S+) \[(\S+), (\S+)\]\)"
)


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def _printed(text: str, want: float | str, digits: int) -> None:
    """text is want printed to `digits` significant digits (or the same word)."""
    if isinstance(want, str):
        assert text == want, (text, want)
    else:
        value = float(text.replace(",", ""))
        assert value == pytest.approx(want, rel=0.5 * 10 ** (1 - digits)), (text, want)


def test_the_summary_says_what_a_simulated_row_is_worth(report: dict) -> None:
    text = summary_text(report)
    assert "transfer gap C by m" in text and "no pretraining: E0(m) =" in text
    assert "at n = 100: one simulated row is worth" in text, text
    eq = report["equivalent_samples"]
    m_ref, by_n = eq["m_ref"], {p["n"]: p for p in eq["points"]}
    lines = [WORTH.search(line) for line in text.splitlines() if "simulated row is worth" in line]
    assert [_count(found.group(1)) for found in lines if found] == SIZES, text
    for found in lines:
        n = _count(found.group(1))
        point = by_n[n]
        # by hand: m_eq solves E0(m_eq) = E(n) on the baseline curve; per row, (m_eq - m_ref)/n
        m_eq = _m_eq_by_hand(eq, point["mae"])
        ci = point["m_eq_ci90"]
        worth = [(m - m_ref) / n if isinstance(m, float) else "unbounded" for m in [m_eq, *ci]]
        for printed, want in zip(found.groups()[1:4], worth, strict=True):
            _printed(printed, want, 2)
        for printed, want in zip(found.groups()[4:], [m_eq, *ci], strict=True):
            _printed(printed, want, 3)
