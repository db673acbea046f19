"""The two training loops every torch family shares: a family only says how to build its
network and how to encode its inputs.

`pretrain` fits a network on n source rows until a source hold-out stops improving; `finetune`
re-initialises the head and trains on the experimental train split. Both are deterministic for
a given seed and thread count, so the scorer can rebuild exactly the model a trial selected.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from torch import nn

from s2r_ray.config import FinetuneSpace
from s2r_ray.models.base import Diverged, Family, FineTuned, OnEpoch, Pretrained, mae


class Encoder(Protocol):
    """Raw feature rows -> the network's float32 inputs, fitted once on the source."""

    def transform(self, X: np.ndarray) -> np.ndarray: ...

    def state(self) -> dict: ...


class Transferable(Protocol):
    """What the loops need of a network beyond nn.Module: a `head` to re-initialise and
    `freeze(k)` for its k lowest stages."""

    head: nn.Module

    def freeze(self, k: int) -> None: ...


@dataclass
class Network:
    """A trained network with the encoding and output scaling that give it its units."""

    module: nn.Module
    encoder: Encoder
    n_in: int  # input columns, to rebuild the module from its state
    y_center: float
    y_scale: float

    def predict(self, X: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """Predictions in the target's units, computed on `device` (the module moves there: a
        network rebuilt from its state starts on the CPU)."""
        self.module.to(device).eval()
        with torch.no_grad():
            Z = torch.from_numpy(self.encoder.transform(X)).to(device)
            out = torch.cat([self.module(b) for b in Z.split(65536)]) if len(Z) else Z[:, 0]
        return out.cpu().numpy().astype(np.float64) * self.y_scale + self.y_center

    def state(self) -> dict:
        """Plain numpy form, cheap to ship through the object store and rebuild anywhere."""
        return {
            "weights": {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()},
            "encoder": self.encoder.state(),
            "n_in": self.n_in,
            "y_center": self.y_center,
            "y_scale": self.y_scale,
        }


def _standardise_y(y: np.ndarray) -> tuple[float, float]:
    y = np.asarray(y, dtype=np.float64)
    return float(y.mean()), float(max(y.std(), 1e-8))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_finite(stage: str, step: int, loss: torch.Tensor, val: float) -> None:
    """Once per evaluation, not per step: a per-step check would sync a GPU every batch."""
    if not (math.isfinite(val) and math.isfinite(loss.item())):
        raise Diverged(f"{stage} diverged at {step}: loss {loss.item():.3g}, val MAE {val:.3g}")


def _float_or_range(v: Any) -> tuple[float, float] | float:
    return (float(v[0]), float(v[1])) if isinstance(v, tuple) else float(v)


class TorchFamily(Family):
    """A family trained by the shared loops; subclasses build the network and its encoder."""

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

        The step budget grows with n by itself: an evaluation happens every pass over the data
        (at least `min_steps_per_eval` steps), and training stops after `patience` evaluations
        without improvement. `X_extra` (target train features, no labels) joins the input
        encoding so that features rare in the source still get a sensible scale.
        """
        hp = self.pretrain_hp
        start = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        encoder = self.fit_encoder(X if X_extra is None else np.vstack([X, X_extra]))
        y_center, y_scale = _standardise_y(y)
        net = Network(self.build(X.shape[1], 0.0), encoder, X.shape[1], y_center, y_scale)
        net.module.to(device)
        Xt = torch.from_numpy(encoder.transform(X)).to(device)
        yt = torch.from_numpy(
            ((np.asarray(y, np.float64) - y_center) / y_scale).astype(np.float32)
        ).to(device)
        opt = torch.optim.AdamW(net.module.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        # Halve the rate after every patience/2 stale evaluations: training stops on a plateau
        # the decayed rate could not leave, not on the first noisy one.
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(0, hp.patience // 2 - 1), threshold=1e-6
        )
        bs = min(hp.batch_size, len(X))
        steps_per_eval = max(math.ceil(len(X) / bs), hp.min_steps_per_eval)

        best, best_state, stale, step = math.inf, _snapshot(net.module), 0, 0
        curve: list[tuple[int, float]] = []
        converged = False
        while step < hp.max_steps:
            net.module.train()
            for _ in range(min(steps_per_eval, hp.max_steps - step)):
                idx = torch.randint(len(X), (bs,), generator=gen).to(device)
                loss = nn.functional.l1_loss(net.module(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            val = mae(y_val, net.predict(X_val, device))
            _check_finite("pretraining", step, loss, val)
            plateau.step(val)
            curve.append((step, val))
            if val < best * (1 - 1e-6):
                best, best_state, stale = val, _snapshot(net.module), 0
            else:
                stale += 1
                if stale >= hp.patience:
                    converged = True
                    break
        net.module.load_state_dict(best_state)
        return Pretrained(
            state=net.state(),
            source_val_mae=best,
            steps=step,
            converged=converged,
            seconds=time.perf_counter() - start,
            curve=curve,
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
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        dropout = float(hp.get("dropout", 0.0))
        if pretrained is None:
            module = self.build(X.shape[1], dropout)
            net = Network(module, self.fit_encoder(X), X.shape[1], 0.0, 1.0)
        else:
            net = self.network(pretrained, dropout)
            net.module.head.reset_parameters()
            net.module.freeze(int(hp.get("freeze", 0)))
        net.y_center, net.y_scale = _standardise_y(y)
        net.module.to(device)
        Xt = torch.from_numpy(net.encoder.transform(X)).to(device)
        yt = torch.from_numpy(
            ((np.asarray(y, np.float64) - net.y_center) / net.y_scale).astype(np.float32)
        ).to(device)
        params = [p for p in net.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
        bs = min(int(hp["batch_size"]), len(X))
        epochs = int(hp["epochs"])
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=epochs * math.ceil(len(X) / bs)
        )

        best, best_state = math.inf, _snapshot(net.module)
        curve: list[float] = []
        for epoch in range(1, min(epochs, stop_epoch or epochs) + 1):
            net.module.train()
            for idx in torch.randperm(len(X), generator=gen).split(bs):
                idx = idx.to(device)
                loss = nn.functional.l1_loss(net.module(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                cosine.step()
            val = mae(y_val, net.predict(X_val, device))
            _check_finite("fine-tuning", epoch, loss, val)
            curve.append(val)
            if val < best:
                best, best_state = val, _snapshot(net.module)
            if on_epoch is not None:
                on_epoch(epoch, val, best)
        net.module.load_state_dict(best_state)
        return FineTuned(net, best, curve)
