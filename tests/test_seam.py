"""The model seam: a family defined here, unknown to the study code, runs a whole study; and the
MLP's numbers did not move when it went behind the seam."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch
from optuna.distributions import FloatDistribution

from s2r_ray import models
from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.models.base import Family, FineTuned, Pretrained, mae
from s2r_ray.models.hyperparameters import PretrainConfig
from s2r_ray.models.mlp import MLPFamily, MLPOptions
from s2r_ray.study.driver import run_study

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

# `s2r_ray.model` before the seam (commit 4cd40c5), one thread: pretrain, finetune, scratch
PRE_SEAM = {
    "pretrain": 0.7736269980279186,
    "finetune": 0.7730612813618805,
    "scratch": 0.7640694063283554,
}


class Linear:
    def __init__(self, state: dict):
        self.state = state

    def predict(self, X: np.ndarray, device: str = "cpu") -> np.ndarray:
        s = self.state
        return ((np.asarray(X) - s["mu"]) / s["sd"]) @ s["w"] + s["b"]


def _ridge(X, y, alpha: float, prior: dict | None) -> dict:
    """Ridge regression shrunk towards the pretrained coefficients instead of towards 0."""
    mu, sd = (prior["mu"], prior["sd"]) if prior else (X.mean(0), X.std(0) + 1e-8)
    Z = (X - mu) / sd
    w0 = prior["w"] if prior else np.zeros(X.shape[1])
    b = float(np.mean(y - Z @ w0))
    w = w0 + np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - b - Z @ w0))
    return {"mu": mu, "sd": sd, "w": w, "b": float(np.mean(y - Z @ w))}


class RidgeFamily(Family):
    """One 'epoch', one hyperparameter: a family as small as a family can be."""

    def search_space(self, space, baseline):
        return {"alpha": FloatDistribution(1e-3, 1e3, log=True)}, {}

    def max_epochs(self, space) -> int:
        return 1

    def pretrain(self, X, y, X_val, y_val, *, seed, X_extra=None, device="cpu"):
        state = _ridge(np.asarray(X, float), np.asarray(y, float), 1.0, None)
        val = mae(y_val, Linear(state).predict(X_val))
        return Pretrained(state, val, steps=1, converged=True, seconds=0.0)

    def finetune(self, X, y, X_val, y_val, *, hp, seed, pretrained=None, device="cpu",
                 on_epoch=None, stop_epoch=None, on_best=None):  # fmt: skip
        net = Linear(_ridge(np.asarray(X, float), np.asarray(y, float), hp["alpha"], pretrained))
        val = mae(y_val, net.predict(X_val))
        if on_epoch:
            on_epoch(1, val, val)
        return FineTuned(net, val, [val])

    def load(self, state):
        return Linear(state)


@pytest.fixture
def ridge():
    models.register("ridge", RidgeFamily)
    yield
    del models.FAMILIES["ridge"]


def test_a_family_defined_outside_the_package_runs_a_study(ray_session, ridge, tmp_path):
    raw = {
        "name": "ridge",
        "sizes": [50, 200, 600],
        "repetitions": 2,
        "model": {"kind": "ridge"},
        "data": {"synthetic": {"n_source": 900, "n_target": 120, "n_features": 6}},
        "tune": {"trials_per_cell": 3, "startup_trials": 2},
        "report": {"n_boot": 100},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"},
    }
    report = run_study(build_config(raw), tmp_path / "out", echo=lambda line: None)
    assert report["status"] == "complete"
    records = StudyFolder(tmp_path / "out").ledger()
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert all(set(r["best_hp"]) == {"alpha"} and r["trials"] == 3 for r in records)
    pretrained = [r for r in records if r["n"]]
    assert all(r["pretrain_steps"] == 1 and r["zero_shot_mae"] > 0 for r in pretrained)
    assert [s["n"] for s in report["sizes"]] == [50, 200, 600]


def test_an_unknown_family_option_is_a_config_error_naming_it():
    with pytest.raises(ValueError, match="model: hiden: unknown field"):
        build_config({"name": "x", "sizes": [10], "model": {"hiden": [8]}})
    with pytest.raises(ValueError, match="unknown model kind 'rnn'; known: attention, mlp"):
        build_config({"name": "x", "sizes": [10], "model": {"kind": "rnn"}})


def test_the_config_imports_the_models_never_the_reverse():
    """Families own their settings: no module of the package imports the study config."""
    package = Path(models.__file__).parent
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    assert "s2r_ray.models.base" in imported and "s2r_ray.config" not in imported


def test_the_mlp_computes_what_it_did_before_the_seam():
    """Figures computed by the pre-seam `s2r_ray.model` functions (same seeds, same data): the
    refactoring moved code, it did not change a single number."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 5)), rng.normal(size=300)
    family = MLPFamily(MLPOptions(hidden=[16, 8]), PretrainConfig(max_steps=300, patience=3))
    pre = family.pretrain(X[:200], y[:200], X[200:], y[200:], seed=1, X_extra=X[:20])
    hp = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 5, "batch_size": 32, "freeze": 1}
    ft = family.finetune(X[:100], y[:100], X[200:], y[200:], hp=hp, seed=2, pretrained=pre.state)
    scratch = family.finetune(X[:100], y[:100], X[200:], y[200:], hp=hp | {"freeze": 0}, seed=2)
    assert pre.source_val_mae == pytest.approx(PRE_SEAM["pretrain"], rel=1e-6)
    assert ft.best_val_mae == pytest.approx(PRE_SEAM["finetune"], rel=1e-6)
    assert scratch.best_val_mae == pytest.approx(PRE_SEAM["scratch"], rel=1e-6)
