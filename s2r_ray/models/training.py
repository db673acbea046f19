"""The one training loop of the torch families; pretraining and fine-tuning are two plans for it.

A run seeds torch, builds its start network (fresh, or pretrained with a new head), standardises
the targets, and trains in rounds: AdamW steps on the L1 loss, the hold-out MAE after each round,
the best weights kept and restored at the end. A `Plan` says what differs: the batches of a
round, the learning-rate schedule and when the run ends. Same seed and thread count, same
numbers: the scorer rebuilds exactly the model a trial selected.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from s2r_ray.models.base import Diverged, OnEpoch, mae
from s2r_ray.models.hyperparameters import PretrainConfig
from s2r_ray.models.network import Network


class Plan(ABC):
    """What one kind of run does its own way. Made for one run: it holds the run's schedule."""

    stage: ClassVar[str]  # names the run in a divergence error
    min_gain: ClassVar[float] = 0.0  # relative drop of the hold-out MAE that counts as better

    def __init__(self, lr: float, weight_decay: float, batch_size: int, n_rows: int) -> None:
        self.lr, self.weight_decay = lr, weight_decay
        self.batch_size, self.n_rows = min(batch_size, n_rows), n_rows

    @abstractmethod
    def schedule(self, opt: torch.optim.Optimizer) -> None:
        """Set the learning-rate schedule on the run's optimizer."""

    @abstractmethod
    def batches(self, step: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
        """Row indices of each batch of the next round, drawn from `gen`."""

    @abstractmethod
    def stepped(self) -> None:
        """After each optimizer step."""

    @abstractmethod
    def evaluated(self, val: float) -> None:
        """After each round's evaluation."""

    @abstractmethod
    def clock(self, rounds: int, step: int) -> int:
        """The number an evaluation is known by, in the curve, the hook and errors."""

    @abstractmethod
    def done(self, rounds: int, step: int, stale: int) -> bool:
        """Whether the run stops before another round."""


class Pretraining(Plan):
    """Rounds of batches drawn with replacement, at least one pass over the rows and at least
    `min_steps_per_eval` steps each, so the step budget grows with n by itself; stops after
    `patience` evaluations without improvement (converged) or at `max_steps`."""

    stage = "pretraining"
    min_gain = 1e-6

    def __init__(self, recipe: PretrainConfig, n_rows: int) -> None:
        super().__init__(recipe.lr, recipe.weight_decay, recipe.batch_size, n_rows)
        self.recipe = recipe
        self.draws = max(math.ceil(n_rows / self.batch_size), recipe.min_steps_per_eval)

    def schedule(self, opt: torch.optim.Optimizer) -> None:
        # Halve the rate after every patience/2 stale evaluations: training stops on a plateau
        # the decayed rate could not leave, not on the first noisy one.
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(0, self.recipe.patience // 2 - 1), threshold=1e-6
        )

    def batches(self, step: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        for _ in range(min(self.draws, self.recipe.max_steps - step)):
            yield torch.randint(self.n_rows, (self.batch_size,), generator=gen)

    def stepped(self) -> None:
        """The rate moves on evaluations only."""

    def evaluated(self, val: float) -> None:
        self.plateau.step(val)

    def clock(self, rounds: int, step: int) -> int:
        return step

    def done(self, rounds: int, step: int, stale: int) -> bool:
        return stale >= self.recipe.patience or step >= self.recipe.max_steps


class FineTuning(Plan):
    """Epochs (shuffled passes over the rows) under a cosine over `epochs`; stops after `epochs`,
    or after `stop_epoch` to replay a trial stopped early."""

    stage = "fine-tuning"

    def __init__(self, hp: dict, n_rows: int, stop_epoch: int | None) -> None:
        super().__init__(float(hp["lr"]), float(hp["weight_decay"]), int(hp["batch_size"]), n_rows)
        self.epochs = int(hp["epochs"])
        self.last = min(self.epochs, stop_epoch or self.epochs)

    def schedule(self, opt: torch.optim.Optimizer) -> None:
        steps = self.epochs * math.ceil(self.n_rows / self.batch_size)
        self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    def batches(self, step: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
        return torch.randperm(self.n_rows, generator=gen).split(self.batch_size)

    def stepped(self) -> None:
        self.cosine.step()

    def evaluated(self, val: float) -> None:
        """The cosine does not look at the hold-out."""

    def clock(self, rounds: int, step: int) -> int:
        return rounds

    def done(self, rounds: int, step: int, stale: int) -> bool:
        return rounds >= self.last


@dataclass
class Trained:
    net: Network  # with its best evaluation's weights
    best_val_mae: float
    steps: int
    stale: int  # evaluations after the best one
    curve: list[tuple[int, float]]  # (the plan's clock, hold-out MAE) per evaluation


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_finite(stage: str, at: int, loss: torch.Tensor, val: float) -> None:
    """Once per evaluation, not per step: a per-step check would sync a GPU every batch."""
    if not (math.isfinite(val) and math.isfinite(loss.item())):
        raise Diverged(f"{stage} diverged at {at}: loss {loss.item():.3g}, val MAE {val:.3g}")


def train(
    start: Callable[[], Network],
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    plan: Plan,
    *,
    seed: int,
    device: str = "cpu",
    on_eval: OnEpoch | None = None,
) -> Trained:
    """Train the network `start` builds (under the seed: its initialisation is drawn here) on
    X, y by `plan`; `on_eval(clock, val MAE, best val MAE)` after each evaluation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = start()
    y64 = np.asarray(y, dtype=np.float64)
    net.y_center, net.y_scale = float(y64.mean()), float(max(y64.std(), 1e-8))
    net.module.to(device)
    Xt = torch.from_numpy(net.encoder.transform(X)).to(device)
    yt = torch.from_numpy(((y64 - net.y_center) / net.y_scale).astype(np.float32)).to(device)
    params = [p for p in net.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    plan.schedule(opt)

    best, best_state, stale, rounds, step = math.inf, _snapshot(net.module), 0, 0, 0
    curve: list[tuple[int, float]] = []
    while not plan.done(rounds, step, stale):
        net.module.train()
        for idx in plan.batches(step, gen):
            idx = idx.to(device)
            loss = nn.functional.l1_loss(net.module(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            plan.stepped()
            step += 1
        rounds += 1
        at, val = plan.clock(rounds, step), mae(y_val, net.predict(X_val, device))
        _check_finite(plan.stage, at, loss, val)
        plan.evaluated(val)
        curve.append((at, val))
        if val < best * (1 - plan.min_gain):
            best, best_state, stale = val, _snapshot(net.module), 0
        else:
            stale += 1
        if on_eval is not None:
            on_eval(at, val, best)
    net.module.load_state_dict(best_state)
    return Trained(net, best, step, stale, curve)
