"""The torch families' training settings: the fixed pretraining recipe (the config's `pretrain:`
section) and the fine-tuning search space (`finetune:`).

Pydantic only, no torch: the study config loads them without importing a network.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PretrainConfig(BaseModel):
    """Fixed pretraining recipe; training runs to convergence on the source hold-out."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(128, ge=1)
    patience: int = Field(8, ge=1, description="evaluations without improvement before stopping")
    min_steps_per_eval: int = Field(50, ge=1)
    max_steps: int = Field(20000, ge=1, description="cap; a size that hits it is flagged")


class FinetuneSpace(BaseModel):
    """Search space per (n, r) cell; a [lo, hi] pair is a range, a scalar is fixed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    lr: tuple[float, float] | float = (3e-4, 3e-2)
    weight_decay: tuple[float, float] | float = (1e-6, 1e-2)
    epochs: tuple[int, int] | int = (20, 80)
    batch_size: list[int] | int = Field(default_factory=lambda: [16, 32, 64])
    freeze: list[int] | int = Field(default_factory=lambda: [0, 1])
    dropout: tuple[float, float] | float = (0.0, 0.2)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> FinetuneSpace:
        for name in ("lr", "weight_decay", "epochs", "dropout"):
            v = getattr(self, name)
            if isinstance(v, tuple) and v[0] > v[1]:
                raise ValueError(f"{name}: low {v[0]} is above high {v[1]}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, tuple) and v[0] <= 0:
                raise ValueError(f"{name}: a log range needs a positive low end")
        return self
