"""The MLP family: a stack of Linear-activation-dropout blocks on descriptor vectors, inputs
standardised robustly."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from s2r_ray.data.dataset import Rows
from s2r_ray.models import base
from s2r_ray.models.torch_family import (
    StackedForward,
    TorchFamily,
    stacked_dropout,
    stacked_linear,
)

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
    def fit(cls, X: np.ndarray | Rows, clip: float = 10.0) -> Scaler:
        """Mean and standard deviation in float64, read block by block (no float64 copy of a
        large pool) and summed row after row as `X.mean(axis=0)` / `X.std(axis=0)` do: the same
        numbers to the last digit."""
        rows = X if isinstance(X, Rows) else Rows.of(np.asarray(X))
        n = len(rows)
        mean = _column_sum(rows, lambda b: b) / n
        std = np.sqrt(_column_sum(rows, lambda b: np.square(b - mean)) / n)
        return cls(mean, np.where(std > 1e-8, std, 1.0), clip)

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.center) / self.scale
        return np.clip(Z, -self.clip, self.clip).astype(np.float32)

    def state(self) -> dict:
        return {"center": self.center, "scale": self.scale, "clip": self.clip}


def _column_sum(rows: Rows, term: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Column sums of term(row) in float64, accumulated in row order across blocks (the order
    numpy's axis-0 reduction adds the rows of one matrix in)."""
    total = np.zeros(rows.n_columns)
    for block in rows.blocks():
        values = term(block.astype(np.float64))
        values[0] += total
        total = np.add.reduce(values, axis=0)
    return total


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


def forward_stacked(
    modules: Sequence[nn.Module], x: torch.Tensor, noise: Sequence[torch.Generator]
) -> torch.Tensor:
    """K MLPs of one shape on (K, batch, n_in) -> (K, batch), trained together
    (`torch_family.train_members`): one batched product per layer instead of K small ones."""
    mlps = cast("list[MLP]", list(modules))
    for blocks in zip(*(m.body for m in mlps), strict=True):
        linear, activation, dropout = zip(*blocks, strict=True)  # each member's, block by block
        x = stacked_linear(linear, x)
        x = activation[0](x)
        x = stacked_dropout([d.p for d in dropout], x, noise)
    return stacked_linear([m.head for m in mlps], x).squeeze(-1)


class MLPOptions(base.Options):
    hidden: list[int] = Field(default_factory=lambda: [128, 64, 32], min_length=1)
    activation: Literal["silu", "relu", "gelu"] = "silu"
    clip: float = Field(10.0, gt=0, description="standardised inputs are clipped to +-clip")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("every hidden width must be >= 1")
        return v


class MLPFamily(TorchFamily):
    """`model.kind: mlp` (the default): descriptor vectors, e.g. composition statistics."""

    Options = MLPOptions
    options: MLPOptions

    def build(self, n_in: int, dropout: float) -> MLP:
        return MLP(n_in, self.options.hidden, self.options.activation, dropout)

    def stacked(self) -> StackedForward:
        return forward_stacked

    def fit_encoder(self, X: np.ndarray | Rows) -> Scaler:
        return Scaler.fit(X, self.options.clip)

    def encoder_from_state(self, state: dict) -> Scaler:
        return Scaler(np.array(state["center"]), np.array(state["scale"]), state["clip"])
