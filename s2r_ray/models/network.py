"""A torch family's network with the input encoding and output scaling that give it its units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Encoder(Protocol):
    """Raw feature rows -> the network's float32 inputs, fitted once on the source."""

    def transform(self, X: np.ndarray) -> np.ndarray: ...

    def state(self) -> dict: ...


@dataclass
class Network:
    """The output scaling is the identity until training sets it from the training targets."""

    module: torch.nn.Module
    encoder: Encoder
    n_in: int  # input columns, to rebuild the module from its state
    y_center: float = 0.0
    y_scale: float = 1.0

    def predict(self, X: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """Predictions in the target's units; the module moves to `device`."""
        self.module.to(device).eval()
        return self.predict_encoded(torch.from_numpy(self.encoder.transform(X)).to(device))

    def predict_encoded(self, Z: torch.Tensor) -> np.ndarray:
        """Predictions for inputs encoded already (a training loop encodes its hold-out once)."""
        with torch.no_grad():
            out = torch.cat([self.module(b) for b in Z.split(65536)]) if len(Z) else Z[:, 0]
        return out.cpu().numpy().astype(np.float64) * self.y_scale + self.y_center

    def state(self, weights: dict[str, torch.Tensor] | None = None) -> dict:
        """Plain numpy form, cheap to ship through the object store and rebuild anywhere;
        `weights` (a state dict of the module) in place of the module's current ones."""
        weights = self.module.state_dict() if weights is None else weights
        return {
            "weights": {k: v.detach().cpu().numpy() for k, v in weights.items()},
            "encoder": self.encoder.state(),
            "n_in": self.n_in,
            "y_center": self.y_center,
            "y_scale": self.y_scale,
        }
