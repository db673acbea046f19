"""Repetitions grouped by size, and the inverse-variance weights the fits use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Groups:
    """Finished repetitions per size, sizes ascending; values is sizes × max reps, NaN-padded.

    repetitions (same shape as values, NaN-padded) names each value's repetition: the
    experimental split it was scored on, shared by every size. None where the caller had no
    repetition column (the posterior then treats all cells as independent).
    """

    n: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    repetitions: np.ndarray | None = None

    @property
    def size_count(self) -> int:
        return int(self.n.size)

    @property
    def means(self) -> np.ndarray:
        return np.nansum(self.values, axis=1) / self.counts

    @property
    def var_mean(self) -> np.ndarray:
        """Variance of each size mean, s²/R; NaN where a size has a single repetition."""
        ss = np.nansum((self.values - self.means[:, None]) ** 2, axis=1)
        r = self.counts
        return np.where(r > 1, ss / np.maximum(r - 1, 1) / r, np.nan)

    def head(self, k: int) -> Groups:
        """The k smallest sizes (what a backtest fits on)."""
        reps = None if self.repetitions is None else self.repetitions[:k]
        return Groups(self.n[:k], self.values[:k], self.counts[:k], reps)


def group_repetitions(
    table: pd.DataFrame, size_col: str = "n", value_col: str = "mae", rep_col: str = "repetition"
) -> Groups:
    """Collect the finite values of each size; the caller has already dropped bad rows.

    With a rep_col column, each value keeps its repetition (Groups.repetitions: the ids as
    they are when numeric, else codes of pd.factorize; the same at every size).
    """
    if rep_col in table and not pd.api.types.is_numeric_dtype(table[rep_col]):
        table = table.assign(**{rep_col: pd.factorize(table[rep_col])[0]})
    parts = list(table.groupby(size_col, sort=True))
    by_size = [np.asarray(g[value_col], float) for _, g in parts]
    sizes = np.array([n for n, _ in parts], float)
    rmax = max((v.size for v in by_size), default=0)
    values = np.full((len(by_size), rmax), np.nan)
    for i, v in enumerate(by_size):
        values[i, : v.size] = v
    reps = None
    if rep_col in table:
        reps = np.full((len(by_size), rmax), np.nan)
        for i, (_, g) in enumerate(parts):
            reps[i, : len(g)] = np.asarray(g[rep_col], float)
    return Groups(sizes, values, np.array([v.size for v in by_size], int), reps)


def fit_weights(var_mean: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inverse variance of each size mean, the variance floored at the pooled one.

    Five repetitions estimate a variance with 4 degrees of freedom: a size whose repetitions
    happen to agree would otherwise get several times the weight it deserves. Flooring at the
    pooled within-size variance (divided by that size's R) only ever down-weights noisier sizes.
    A size with one repetition takes the pooled value; with no repetitions anywhere (or no
    spread at all) the weights are proportional to R. Works on a leading batch axis.
    """
    var_mean = np.atleast_2d(var_mean)
    dof = np.maximum(np.asarray(counts) - 1, 0)
    s2 = np.where(np.isnan(var_mean), 0.0, var_mean * counts)
    pooled = (s2 * dof).sum(axis=1, keepdims=True) / max(dof.sum(), 1)
    if dof.sum() == 0:
        return np.broadcast_to(np.asarray(counts, float), var_mean.shape).copy()
    floor = np.where(pooled > 0, pooled, 1.0) / counts
    var = np.where(np.isnan(var_mean), floor, np.maximum(var_mean, floor))
    return 1.0 / var
