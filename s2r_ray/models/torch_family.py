"""What every torch family shares: a family says only how to build its network and encode its
inputs; `training.train` fits it, `pretrain` and `finetune` are its two plans.

`pretrain` fits a network on n source rows until a source hold-out stops improving; `finetune`
re-initialises the head and trains on the experimental train split.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from torch import nn

from s2r_ray.models.base import Family, FineTuned, OnEpoch, Pretrained
from s2r_ray.models.hyperparameters import FinetuneSpace
from s2r_ray.models.network import Encoder, Network
from s2r_ray.models.training import FineTuning, Pretraining, train


def _float_or_range(v: Any) -> tuple[float, float] | float:
    return (float(v[0]), float(v[1])) if isinstance(v, tuple) else float(v)


class TorchFamily(Family):
    """A family trained by `training.train`; subclasses build the network and its encoder."""

    @abstractmethod
    def build(self, n_in: int, dropout: float) -> nn.Module:
        """A freshly initialised network (a `Transferable` nn.Module) for n_in input columns."""

    @abstractmethod
    def fit_encoder(self, X: np.ndarray) -> Encoder: ...

    @abstractmethod
    def encoder_from_state(self, state: dict) -> Encoder: ...

    def network(self, state: dict, dropout: float = 0.0) -> Network:
        encoder = self.encoder_from_state(state["encoder"])
        module = self.build(int(state["n_in"]), dropout)
        module.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state["weights"].items()})
        n_in, y_center, y_scale = (state[k] for k in ("n_in", "y_center", "y_scale"))
        return Network(module, encoder, int(n_in), float(y_center), float(y_scale))

    def load(self, state: dict) -> Network:
        return self.network(state)

    def fresh(self, X: np.ndarray, dropout: float) -> Network:
        """An untrained network, its encoder fitted on X."""
        return Network(self.build(X.shape[1], dropout), self.fit_encoder(X), X.shape[1])

    def transferred(self, state: dict, dropout: float, freeze: int) -> Network:
        """The pretrained network with a new head and its `freeze` lowest stages frozen."""
        net = self.network(state, dropout)
        net.module.head.reset_parameters()
        net.module.freeze(freeze)
        return net

    def search_space(
        self, space: FinetuneSpace, baseline: bool
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        dists: dict[str, BaseDistribution] = {}
        fixed: dict[str, Any] = {}
        for name, log in (("lr", True), ("weight_decay", True), ("dropout", False)):
            v = _float_or_range(getattr(space, name))
            if isinstance(v, tuple) and v[0] != v[1]:
                dists[name] = FloatDistribution(v[0], v[1], log=log)
            else:
                fixed[name] = v[0] if isinstance(v, tuple) else v
        if isinstance(space.epochs, tuple) and space.epochs[0] != space.epochs[1]:
            dists["epochs"] = IntDistribution(*space.epochs)
        else:
            epochs = space.epochs
            fixed["epochs"] = int(epochs[0] if isinstance(epochs, tuple) else epochs)
        for name in ("batch_size", "freeze"):
            v = getattr(space, name)
            choices = sorted(set(v)) if isinstance(v, list) else [v]
            if name == "freeze" and baseline:
                choices = [0]  # nothing pretrained to freeze
            if len(choices) > 1:
                dists[name] = CategoricalDistribution(choices)
            else:
                fixed[name] = int(choices[0])
        return dists, fixed

    def max_epochs(self, space: FinetuneSpace) -> int:
        e = space.epochs
        return max(e) if isinstance(e, tuple) else e

    def pretrain(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        seed: int,
        X_extra: np.ndarray | None = None,
        device: str = "cpu",
    ) -> Pretrained:
        """Train on source rows until the source hold-out stops improving (or the step cap).
        `X_extra` (target train features, no labels) joins the input encoding so that features
        rare in the source still get a sensible scale."""
        start = time.perf_counter()
        X_fit = X if X_extra is None else np.vstack([X, X_extra])
        plan = Pretraining(self.pretrain_hp, len(X))
        run = train(
            lambda: self.fresh(X_fit, 0.0), X, y, X_val, y_val, plan, seed=seed, device=device
        )
        return Pretrained(
            state=run.net.state(),
            source_val_mae=run.best_val_mae,
            steps=run.steps,
            converged=run.stale >= self.pretrain_hp.patience,
            seconds=time.perf_counter() - start,
            curve=run.curve,
        )

    def finetune(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        hp: dict,
        seed: int,
        pretrained: dict | None = None,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
        stop_epoch: int | None = None,
    ) -> FineTuned:
        """hp: lr, weight_decay, epochs, batch_size, freeze, dropout. The head is always new,
        outputs are standardised on the target train values, the rate follows a cosine over
        `epochs`, and the epoch with the best validation MAE is kept."""
        dropout = float(hp.get("dropout", 0.0))

        def start() -> Network:
            if pretrained is None:
                return self.fresh(X, dropout)
            return self.transferred(pretrained, dropout, int(hp.get("freeze", 0)))

        plan = FineTuning(hp, len(X), stop_epoch)
        run = train(start, X, y, X_val, y_val, plan, seed=seed, device=device, on_eval=on_epoch)
        return FineTuned(run.net, run.best_val_mae, [val for _, val in run.curve])
