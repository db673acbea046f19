"""The MLP family: a stack of Linear-activation-dropout blocks on descriptor vectors, inputs
standardised robustly."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from s2r_ray.models import base
from s2r_ray.models.torch_family import TorchFamily

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

    def state(self) -> dict:
        return {"center": self.center, "scale": self.scale, "clip": self.clip}


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

    def fit_encoder(self, X: np.ndarray) -> Scaler:
        return Scaler.fit(X, self.options.clip)

    def encoder_from_state(self, state: dict) -> Scaler:
        return Scaler(np.array(state["center"]), np.array(state["scale"]), state["clip"])
