"""The numeric tables one study works on: a computed source pool and an experimental target."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Features and values for both sides of a Sim2Real pair, already cleaned and featurized.

    Rows are aligned across arrays. `*_ids` are canonical keys (reduced formula, canonical SMILES,
    pair tuple as a string) so that source rows can be kept out of the target test split.
    `target_reference` holds, per target row, the computed value for the same identifier (NaN where
    the source has none): the "simulation alone" prediction the report compares against.
    """

    source_X: np.ndarray
    source_y: np.ndarray
    source_ids: np.ndarray
    target_X: np.ndarray
    target_y: np.ndarray
    target_ids: np.ndarray
    feature_names: list[str]
    property_name: str = "y"
    units: str = ""
    target_reference: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source_X = np.ascontiguousarray(self.source_X, dtype=np.float32)
        self.target_X = np.ascontiguousarray(self.target_X, dtype=np.float32)
        self.source_y = np.asarray(self.source_y, dtype=np.float32)
        self.target_y = np.asarray(self.target_y, dtype=np.float32)
        self.source_ids = np.asarray(self.source_ids).astype(str)
        self.target_ids = np.asarray(self.target_ids).astype(str)
        d = len(self.feature_names)
        for name, X, y, ids in (
            ("source", self.source_X, self.source_y, self.source_ids),
            ("target", self.target_X, self.target_y, self.target_ids),
        ):
            if X.ndim != 2 or X.shape[1] != d:
                raise ValueError(f"{name} features have shape {X.shape}, expected (rows, {d})")
            if not (len(X) == len(y) == len(ids)):
                raise ValueError(f"{name} features, values and ids differ in length")
        if self.target_reference is not None:
            self.target_reference = np.asarray(self.target_reference, dtype=np.float64)
            if len(self.target_reference) != len(self.target_y):
                raise ValueError("target_reference must have one entry per target row")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)
