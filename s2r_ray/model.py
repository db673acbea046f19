"""The network and its two training stages, on plain arrays: no Ray, no MLflow.

`pretrain` fits an MLP on n source rows until a source hold-out stops improving; `finetune`
re-initialises the head and trains on the experimental train split. Both are deterministic for a
given seed and thread count, so the scorer can rebuild exactly the model a trial selected.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from s2r_ray.config import ModelConfig, PretrainConfig

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class Scaler:
    """Robust standardisation: a zero scale becomes 1 and outputs are clipped.

    A feature absent from the fitting rows (an element the source never contains) would
    otherwise get a z-score in the tens of thousands on one target row and wreck a repetition.
    """

    center: np.ndarray
    scale: np.ndarray
    clip: float = 10.0

    @classmethod
    def fit(cls, X: np.ndarray, clip: float = 10.0) -> Scaler:
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 1e-8, std, 1.0), clip)

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.center) / self.scale
        return np.clip(Z, -self.clip, self.clip).astype(np.float32)


class MLP(nn.Module):
    """A stack of Linear-activation-dropout blocks (the transferable body) and a linear head."""

    def __init__(
        self, n_in: int, hidden: list[int], activation: str = "silu", dropout: float = 0.0
    ):
        super().__init__()
        widths = [n_in, *hidden]
        self.body = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), _ACTIVATIONS[activation](), nn.Dropout(dropout))
            for a, b in itertools.pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.body:
            x = block(x)
        return self.head(x).squeeze(-1)

    def freeze(self, k: int) -> None:
        """Freeze the first k body blocks: the lowest layers carry the most generic features."""
        for i, block in enumerate(self.body):
            for p in block.parameters():
                p.requires_grad_(i >= k)


@dataclass
class Network:
    """A trained MLP with the scalings that give its inputs and outputs their units."""

    module: MLP
    x_scaler: Scaler
    y_center: float
    y_scale: float

    def predict(self, X: np.ndarray, device: str = "cpu") -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            Z = torch.from_numpy(self.x_scaler.transform(X)).to(device)
            out = torch.cat([self.module(b) for b in Z.split(65536)]) if len(Z) else Z[:, 0]
        return out.cpu().numpy().astype(np.float64) * self.y_scale + self.y_center

    def state(self) -> dict:
        """Plain numpy form, cheap to ship through the object store and rebuild anywhere."""
        return {
            "weights": {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()},
            "x_center": self.x_scaler.center,
            "x_scale": self.x_scaler.scale,
            "clip": self.x_scaler.clip,
            "y_center": self.y_center,
            "y_scale": self.y_scale,
        }

    @classmethod
    def from_state(cls, state: dict, model_cfg: ModelConfig, dropout: float = 0.0) -> Network:
        n_in = len(state["x_center"])
        module = MLP(n_in, model_cfg.hidden, model_cfg.activation, dropout)
        module.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state["weights"].items()})
        scaler = Scaler(np.array(state["x_center"]), np.array(state["x_scale"]), state["clip"])
        return cls(module, scaler, float(state["y_center"]), float(state["y_scale"]))


@dataclass
class Pretrained:
    """A pretraining outcome: the network's state and the evidence that it converged."""

    state: dict
    source_val_mae: float
    steps: int
    converged: bool
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class FineTuned:
    network: Network
    best_val_mae: float
    curve: list[float] = field(default_factory=list)


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


def _standardise_y(y: np.ndarray) -> tuple[float, float]:
    y = np.asarray(y, dtype=np.float64)
    return float(y.mean()), float(max(y.std(), 1e-8))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _val_mae(net: Network, X: np.ndarray, y: np.ndarray, device: str) -> float:
    return mae(y, net.predict(X, device))


def pretrain(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    model_cfg: ModelConfig,
    hp: PretrainConfig,
    seed: int,
    X_extra: np.ndarray | None = None,
    device: str = "cpu",
) -> Pretrained:
    """Train on source rows until the source hold-out stops improving (or the step cap).

    The step budget grows with n by itself: an evaluation happens every pass over the data (at
    least `min_steps_per_eval` steps), and training stops after `patience` evaluations without
    improvement. `X_extra` (target train features, no labels) joins the input scaling so that
    features rare in the source still get a sensible scale.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scaler = Scaler.fit(X if X_extra is None else np.vstack([X, X_extra]), model_cfg.clip)
    y_center, y_scale = _standardise_y(y)
    net = Network(
        MLP(X.shape[1], model_cfg.hidden, model_cfg.activation), scaler, y_center, y_scale
    )
    net.module.to(device)
    Xt = torch.from_numpy(scaler.transform(X)).to(device)
    yt = torch.from_numpy(((np.asarray(y, np.float64) - y_center) / y_scale).astype(np.float32)).to(
        device
    )
    opt = torch.optim.AdamW(net.module.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    # Halve the rate after every patience/2 stale evaluations: training stops on a plateau the
    # decayed rate could not leave, not on the first noisy one.
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
        val = _val_mae(net, X_val, y_val, device)
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
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    model_cfg: ModelConfig,
    hp: dict,
    seed: int,
    pretrained: dict | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, float, float], None] | None = None,
    stop_epoch: int | None = None,
) -> FineTuned:
    """Train on the experimental split from a pretrained body (or from scratch when None).

    hp: lr, weight_decay, epochs, batch_size, freeze, dropout. The head is always new, outputs
    are standardised on the target train values, the rate follows a cosine over `epochs`, and
    the epoch with the best validation MAE is kept. `on_epoch(epoch, val_mae, best_val_mae)`
    lets a caller report progress (or stop); `stop_epoch` replays a trial stopped early.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dropout = float(hp.get("dropout", 0.0))
    if pretrained is None:
        net = Network(
            MLP(X.shape[1], model_cfg.hidden, model_cfg.activation, dropout),
            Scaler.fit(X, model_cfg.clip),
            0.0,
            1.0,
        )
    else:
        net = Network.from_state(pretrained, model_cfg, dropout)
        net.module.head.reset_parameters()
        net.module.freeze(int(hp.get("freeze", 0)))
    net.y_center, net.y_scale = _standardise_y(y)
    net.module.to(device)
    Xt = torch.from_numpy(net.x_scaler.transform(X)).to(device)
    yt = torch.from_numpy(
        ((np.asarray(y, np.float64) - net.y_center) / net.y_scale).astype(np.float32)
    ).to(device)
    params = [p for p in net.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    bs = min(int(hp["batch_size"]), len(X))
    epochs = int(hp["epochs"])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(X) / bs))

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
        val = _val_mae(net, X_val, y_val, device)
        curve.append(val)
        if val < best:
            best, best_state = val, _snapshot(net.module)
        if on_epoch is not None:
            on_epoch(epoch, val, best)
    net.module.load_state_dict(best_state)
    return FineTuned(net, best, curve)
