"""The numeric tables one study works on: a computed source pool and an experimental target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

BLOCK_ROWS = 1 << 16  # rows gathered at a time when a subset is read through: ~16 MiB at 64 f32


@dataclass(frozen=True)
class Rows:
    """Some rows of a shared matrix, read by index and never copied whole: a pretraining's n
    source rows are a view of the one pool every job maps from the object store, so 10^7 rows
    cost their gathered batches, not another copy of the pool. `parts` are (matrix, row index or
    None for all rows), read in order as one matrix (the source rows, then the target rows that
    join the input encoding)."""

    parts: tuple[tuple[np.ndarray, np.ndarray | None], ...]

    @classmethod
    def of(cls, X: np.ndarray, index: np.ndarray | None = None) -> Rows:
        return cls(((X, index),))

    def __len__(self) -> int:
        return sum(len(X) if i is None else len(i) for X, i in self.parts)

    @property
    def n_columns(self) -> int:
        return self.parts[0][0].shape[1]

    def __add__(self, other: Rows) -> Rows:
        return Rows(self.parts + other.parts)

    def take(self, at: np.ndarray) -> np.ndarray:
        """The rows at positions `at` (a batch), gathered in that order."""
        if len(self.parts) != 1:
            raise ValueError("take reads a one-part Rows; a sum of parts is read by blocks")
        X, index = self.parts[0]
        return X[at] if index is None else X[index[at]]

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        """Consecutive gathered blocks of at most `rows` rows, in order: one pass over all rows."""
        for X, index in self.parts:
            n = len(X) if index is None else len(index)
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                yield X[start:stop] if index is None else X[index[start:stop]]

    def materialize(self) -> np.ndarray:
        """All rows as one array: for small subsets and for callers that need a matrix."""
        return np.concatenate(list(self.blocks())) if len(self) else self.parts[0][0][:0]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """np.asarray(rows): a family that wants a matrix (one defined outside the package,
        written before pools were shared) gets one."""
        X = self.materialize()
        return X if dtype is None else X.astype(dtype, copy=False)


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
        self.source_ids = np.asarray(self.source_ids, dtype=str)  # no copy when already text
        self.target_ids = np.asarray(self.target_ids, dtype=str)
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
