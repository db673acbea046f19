"""Ready-made numeric feature columns of the table itself (descriptors computed elsewhere).

Canonical key: the id column values, stripped and joined by '|'. The features are per row, so
rows of one key are averaged (the table layer does that for every per-row feature).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import model_validator

from s2r_ray.data.featurizers.base import Featurizer, Options, Rejection


class ColumnsOptions(Options):
    columns: list[str] | None = None
    prefix: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ColumnsOptions:
        if (self.columns is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'columns' (a list) or 'prefix'")
        return self


class ColumnsFeaturizer(Featurizer):
    """The listed columns (or those whose name starts with `prefix`) as features, as read."""

    name = "columns"
    version = "1"
    options_model = ColumnsOptions
    n_ids = None

    @property
    def feature_names(self) -> list[str]:
        return []  # nothing per key: all features are per row

    def row_columns(self, available: Sequence[str]) -> list[str]:
        if self.options.columns is not None:
            return list(self.options.columns)
        return [c for c in available if c.startswith(self.options.prefix or "")]

    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        return ["|".join(part.strip() for part in t) for t in ids]

    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        return np.zeros((len(keys), 0), dtype=np.float32)
