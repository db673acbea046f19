"""What every torch family shares: a family says only how to build its network and encode its
inputs; one training loop (`train`) pretrains and fine-tunes it.

Same seed and thread count, same numbers: the scorer rebuilds exactly the model a trial selected.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
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

from s2r_ray.data.dataset import Rows
from s2r_ray.models.base import Diverged, Family, FineTuned, OnEpoch, Pretrained, mae
from s2r_ray.models.hyperparameters import FinetuneSpace
from s2r_ray.models.network import Encoder, Network

# Training rows whose encoding is larger than this are encoded batch by batch as drawn, not once
# whole: 10^7 source rows would otherwise cost a float64 and a float32 copy of the pool.
ENCODE_WHOLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Plan:
    """A run's settings. Pretraining (`epochs` 0): rounds of at least one pass over the rows and
    at least `min_steps_per_eval` batches drawn with replacement, so the step budget grows with n;
    stops after `patience` evaluations without improvement or at `max_steps`. Fine-tuning:
    shuffled epochs under a cosine over `epochs`; stops after `last` (a replayed trial's stop)."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int = 0
    last: int = 0
    patience: int = 0
    min_steps_per_eval: int = 0
    max_steps: int = 0


@dataclass
class Trained:
    net: Network  # with its best evaluation's weights
    best_val_mae: float
    steps: int
    stale: int  # evaluations after the best one
    curve: list[tuple[int, float]]  # (step when pretraining, epoch when fine-tuning; val MAE)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train(
    start: Callable[[], Network],
    X: np.ndarray | Rows,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    plan: Plan,
    *,
    seed: int,
    device: str = "cpu",
    on_eval: OnEpoch | None = None,
) -> Trained:
    """Train the network `start` builds (its initialisation is drawn under the seed) on
    standardised targets: AdamW on the L1 loss, the hold-out MAE after each round, the best
    weights restored at the end; `on_eval(clock, val MAE, best val MAE)` after each evaluation.
    Rows beyond `ENCODE_WHOLE_BYTES` are gathered and encoded per batch: the same numbers, as the
    encoding is row by row."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = start()
    y64 = np.asarray(y, dtype=np.float64)
    net.y_center, net.y_scale = float(y64.mean()), float(max(y64.std(), 1e-8))
    net.module.to(device)
    rows = X if isinstance(X, Rows) else Rows.of(X)
    whole = len(rows) * rows.n_columns * 4 <= ENCODE_WHOLE_BYTES
    Xt = torch.from_numpy(net.encoder.transform(rows.materialize())).to(device) if whole else None
    yt = torch.from_numpy(((y64 - net.y_center) / net.y_scale).astype(np.float32)).to(device)
    params = [p for p in net.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    n, bs, pretraining = len(rows), min(plan.batch_size, len(rows)), not plan.epochs
    if pretraining:
        # Halve the rate after every patience/2 stale evaluations: training stops on a plateau
        # the decayed rate could not leave, not on the first noisy one.
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(0, plan.patience // 2 - 1), threshold=1e-6
        )
        draws = max(math.ceil(n / bs), plan.min_steps_per_eval)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, plan.epochs * math.ceil(n / bs))
    min_gain = 1e-6 if pretraining else 0.0  # relative drop of the val MAE that counts as better

    best, best_state, stale, rounds, step = math.inf, _snapshot(net.module), 0, 0, 0
    curve: list[tuple[int, float]] = []
    while (stale < plan.patience and step < plan.max_steps) if pretraining else rounds < plan.last:
        net.module.train()
        if pretraining:
            draw = range(min(draws, plan.max_steps - step))
            batches = (torch.randint(n, (bs,), generator=gen) for _ in draw)
        else:
            batches = torch.randperm(n, generator=gen).split(bs)
        for idx in batches:
            xb = (
                torch.from_numpy(net.encoder.transform(rows.take(idx.numpy()))).to(device)
                if Xt is None
                else Xt[idx.to(device)]
            )
            loss = nn.functional.l1_loss(net.module(xb), yt[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not pretraining:
                sched.step()
            step += 1
        rounds += 1
        at, val = step if pretraining else rounds, mae(y_val, net.predict(X_val, device))
        # once per evaluation, not per step: a per-step check would sync a GPU every batch
        if not (math.isfinite(val) and math.isfinite(loss.item())):
            stage = "pretraining" if pretraining else "fine-tuning"
            raise Diverged(f"{stage} diverged at {at}: loss {loss.item():.3g}, val MAE {val:.3g}")
        if pretraining:
            sched.step(val)
        curve.append((at, val))
        if val < best * (1 - min_gain):
            best, best_state, stale = val, _snapshot(net.module), 0
        else:
            stale += 1
        if on_eval is not None:
            on_eval(at, val, best)
    net.module.load_state_dict(best_state)
    return Trained(net, best, step, stale, curve)


class TorchFamily(Family):
    """A family trained by `train`; subclasses build the network and its encoder."""

    @abstractmethod
    def build(self, n_in: int, dropout: float) -> nn.Module:
        """A fresh network for n_in input columns, with a `head` to re-initialise and `freeze(k)`
        for its k lowest stages."""

    @abstractmethod
    def fit_encoder(self, X: np.ndarray | Rows) -> Encoder: ...

    @abstractmethod
    def encoder_from_state(self, state: dict) -> Encoder: ...

    def load(self, state: dict, dropout: float = 0.0) -> Network:
        encoder = self.encoder_from_state(state["encoder"])
        module = self.build(int(state["n_in"]), dropout)
        module.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state["weights"].items()})
        n_in, y_center, y_scale = (state[k] for k in ("n_in", "y_center", "y_scale"))
        return Network(module, encoder, int(n_in), float(y_center), float(y_scale))

    def fresh(self, X: np.ndarray | Rows, dropout: float) -> Network:
        """An untrained network, its encoder fitted on X."""
        n_in = X.n_columns if isinstance(X, Rows) else X.shape[1]
        return Network(self.build(n_in, dropout), self.fit_encoder(X), n_in)

    def search_space(
        self, space: FinetuneSpace, baseline: bool
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        dists: dict[str, BaseDistribution] = {}
        fixed: dict[str, Any] = {}
        for name, kind in (
            ("lr", "log"),
            ("weight_decay", "log"),
            ("dropout", ""),
            ("epochs", int),
        ):
            v = getattr(space, name)
            if isinstance(v, tuple) and v[0] != v[1]:
                dists[name] = (
                    IntDistribution(*v)
                    if kind is int
                    else FloatDistribution(float(v[0]), float(v[1]), log=kind == "log")
                )
            else:
                v = v[0] if isinstance(v, tuple) else v
                fixed[name] = int(v) if kind is int else float(v)
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
        return max(space.epochs) if isinstance(space.epochs, tuple) else space.epochs

    def pretrain(
        self,
        X: np.ndarray | Rows,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        seed: int,
        X_extra: np.ndarray | None = None,
        device: str = "cpu",
    ) -> Pretrained:
        """`X_extra` (target train features, no labels) joins the input encoding so that features
        rare in the source still get a sensible scale. `X` as `Rows` (a view of the shared pool)
        is read block by block and batch by batch, never copied whole."""
        start, r = time.perf_counter(), self.pretrain_hp
        rows = X if isinstance(X, Rows) else Rows.of(X)
        X_fit = rows if X_extra is None else rows + Rows.of(X_extra)
        plan = Plan(
            r.lr, r.weight_decay, r.batch_size, 0, 0, r.patience, r.min_steps_per_eval, r.max_steps
        )
        run = train(
            lambda: self.fresh(X_fit, 0.0), rows, y, X_val, y_val, plan, seed=seed, device=device
        )
        return Pretrained(
            state=run.net.state(),
            source_val_mae=run.best_val_mae,
            steps=run.steps,
            converged=run.stale >= r.patience,
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
        """hp: lr, weight_decay, epochs, batch_size, freeze, dropout. The head is always new."""
        dropout, epochs = float(hp.get("dropout", 0.0)), int(hp["epochs"])

        def start() -> Network:
            if pretrained is None:
                return self.fresh(X, dropout)
            net = self.load(pretrained, dropout)
            net.module.head.reset_parameters()
            net.module.freeze(int(hp.get("freeze", 0)))
            return net

        lr, wd, bs = float(hp["lr"]), float(hp["weight_decay"]), int(hp["batch_size"])
        plan = Plan(lr, wd, bs, epochs, min(epochs, stop_epoch or epochs))
        run = train(start, X, y, X_val, y_val, plan, seed=seed, device=device, on_eval=on_epoch)
        return FineTuned(run.net, run.best_val_mae, [val for _, val in run.curve])
