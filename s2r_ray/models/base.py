"""The model seam: what the study asks of a model family, and what it gets back. The trial,
scoring and pretraining code never ask which family it is: a new architecture is one class (and
one registry line in `s2r_ray.models`). No Ray, no MLflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict

from s2r_ray.models.hyperparameters import FinetuneSpace, PretrainConfig

OnEpoch = Callable[[int, float, float], None]  # (epoch, val MAE, best val MAE so far)
# (epoch, best val MAE, the network's state as `Family.load` takes it) at each new best: a trial
# keeps its own network so that scoring need not train it again
OnBest = Callable[[int, float, Any], None]
# after each round (epoch) of members trained together, with those that diverged in it (by
# index): the members that leave now (a pack's successive halving needs the whole round)
OnRound = Callable[[dict[int, "Diverged"]], Collection[int]]


class Diverged(ArithmeticError):
    """Training produced a non-finite loss or error: a failed trial, not a failed study."""


class Options(BaseModel):
    """A family's own config fields (the `model` section besides `kind`); unknown ones are
    errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Predictor(Protocol):
    def predict(self, X: np.ndarray, device: str = "cpu") -> np.ndarray: ...


@dataclass
class Pretrained:
    """The model's state (plain arrays and numbers, cheap to ship) and evidence it converged."""

    state: dict
    source_val_mae: float
    steps: int
    converged: bool
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """One pretraining's rows: the n source rows, its hold-out, the seed, and the unlabelled
    target train rows a family may use to scale its inputs."""

    X: Any  # np.ndarray, or `Rows`: a view of the shared pool
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    seed: int
    X_extra: np.ndarray | None = None


@dataclass(frozen=True)
class Target:
    """One fine-tuning's rows and start: a cell's target train and validation rows, and the
    pretrained state it starts from (None: from scratch). Members trained together may each
    have their own (cells of one n and m: as many rows)."""

    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    pretrained: dict | None = None


@dataclass
class FineTuned:
    predictor: Predictor
    best_val_mae: float
    curve: list[float] = field(default_factory=list)


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


class Family(ABC):
    """A model family. Fine-tuning is deterministic for a given seed and `stop_epoch`, so the
    scorer can rebuild exactly the model a trial selected."""

    Options: ClassVar[type[Options]] = Options
    # whether `finetune_members` trains members together and honours `on_round`: then a
    # study's fine-tuning trials can run as packs (`tune.pack`)
    packs: ClassVar[bool] = False

    def __init__(self, options: Options, pretrain: PretrainConfig):
        self.options, self.pretrain_hp = options, pretrain

    @abstractmethod
    def search_space(
        self, space: FinetuneSpace, baseline: bool
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        """Optuna distributions to search and fixed values, for a cell with or without a
        pretrained model; `space` is the `finetune:` section less `ensemble`."""

    @abstractmethod
    def max_epochs(self, space: FinetuneSpace) -> int:
        """The most epochs a trial can report: ASHA's horizon, in this family's epochs."""

    @abstractmethod
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
        """Fit the source rows, stopping on the source hold-out. `X_extra`: unlabelled target
        train rows a family may use to scale its inputs."""

    def stacks_pretraining(self, n_in: int, device: str) -> bool:
        """Whether pretrainings of one n train faster as one batch than one after another on
        `device`: then a study packs them by default (`tune.pretrain_pack`)."""
        return False

    def pretrain_members(
        self, sources: Sequence[Source], device: str = "cpu"
    ) -> list[Pretrained | Diverged]:
        """`pretrain` of each source (pretrainings of one n, `tune.pretrain_pack`); a family
        that can trains them together. A member that diverged comes back as its `Diverged`."""
        out: list[Pretrained | Diverged] = []
        for s in sources:
            try:
                out.append(
                    self.pretrain(
                        s.X, s.y, s.X_val, s.y_val, seed=s.seed, X_extra=s.X_extra, device=device
                    )
                )
            except Diverged as e:
                out.append(e)
        return out

    @abstractmethod
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
        on_best: OnBest | None = None,
    ) -> FineTuned:
        """Train on the experimental rows from a pretrained state (or from scratch when None);
        `on_epoch` after each epoch; `stop_epoch` replays a trial stopped early; `on_best` at
        each new best (a family may skip it: scoring then trains the selected trial again)."""

    def finetune_members(
        self,
        targets: Sequence[Target],
        *,
        hps: Sequence[dict],
        seeds: Sequence[int],
        device: str = "cpu",
        stop_epochs: Sequence[int | None] | None = None,
        on_epochs: Sequence[OnEpoch | None] | None = None,
        on_bests: Sequence[OnBest | None] | None = None,
        on_round: OnRound | None = None,
    ) -> list[FineTuned | Diverged]:
        """`finetune` of each (target, hp, seed) (a scoring ensemble, a pack of trials); a
        family that can trains them together (`packs`: then it also honours `on_round`). A
        member that diverged comes back as its `Diverged`."""
        if on_round is not None:
            raise NotImplementedError(f"{type(self).__name__} does not train members together")
        k = len(hps)
        out: list[FineTuned | Diverged] = []
        for target, hp, seed, stop, on_epoch, on_best in zip(
            targets,
            hps,
            seeds,
            stop_epochs or [None] * k,
            on_epochs or [None] * k,
            on_bests or [None] * k,
            strict=True,
        ):
            try:
                out.append(
                    self.finetune(
                        target.X,
                        target.y,
                        target.X_val,
                        target.y_val,
                        hp=hp,
                        seed=seed,
                        pretrained=target.pretrained,
                        device=device,
                        stop_epoch=stop,
                        on_epoch=on_epoch,
                        on_best=on_best,
                    )
                )
            except Diverged as e:
                out.append(e)
        return out

    @abstractmethod
    def load(self, state: dict) -> Predictor:
        """The pretrained model itself, for its zero-shot error."""
