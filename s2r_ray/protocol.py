"""The study protocol: target splits, nested source subsets, cells, and the leakage guard.

A repetition fixes one target train/val/test split and one permutation of the source pool; the
subset of size n is the first n rows of that permutation, so subsets are nested and a size's
gain over a smaller one is never confounded with a different draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2r_ray.config import ConfigError, SplitConfig, StudyConfig
from s2r_ray.data.dataset import Dataset, Rows


@dataclass(frozen=True)
class Cell:
    """One point of the grid: n source rows (0 = no pretraining), m target rows, repetition r."""

    n: int
    repetition: int
    m: int | None = None

    @property
    def id(self) -> str:
        return f"n{self.n}-m{self.m if self.m is not None else 'all'}-r{self.repetition}"

    @property
    def pretrain_id(self) -> str:
        """Pretraining depends on (n, r) only, so every m and every trial of the cell share it."""
        return f"n{self.n}-r{self.repetition}"

    @property
    def is_baseline(self) -> bool:
        return self.n == 0

    def to_dict(self) -> dict:
        return {"n": self.n, "repetition": self.repetition, "m": self.m}


@dataclass
class Repetition:
    """Row indices for one repetition; everything a cell needs to slice the Dataset."""

    index: int
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    pool: np.ndarray
    holdout: np.ndarray
    excluded_for_leakage: int

    def source_subset(self, n: int) -> np.ndarray:
        return self.pool[:n]

    def target_train(self, m: int | None) -> np.ndarray:
        return self.train if m is None else self.train[:m]


@dataclass
class Plan:
    """The dataset and every repetition's indices: shipped once to the object store."""

    dataset: Dataset
    repetitions: list[Repetition]
    cells: list[Cell]

    def source_split(self, cell: Cell) -> tuple[Rows, np.ndarray, np.ndarray, np.ndarray]:
        """Pretraining data: the n source rows as a view of the pool (never copied whole: the
        pool may be 10^7 rows shared by every job), their values, the repetition's hold-out."""
        ds, rep = self.dataset, self.repetitions[cell.repetition]
        rows, hold = rep.source_subset(cell.n), rep.holdout
        return Rows.of(ds.source_X, rows), ds.source_y[rows], ds.source_X[hold], ds.source_y[hold]

    def nbytes(self) -> int:
        """The arrays' size: what shipping the plan puts into the object store, about."""
        ds = self.dataset
        arrays = (ds.source_X, ds.source_y, ds.source_ids, ds.target_X, ds.target_y, ds.target_ids)
        reps = sum(r.pool.nbytes + r.holdout.nbytes for r in self.repetitions)
        return sum(a.nbytes for a in arrays) + reps

    def target_split(self, cell: Cell) -> tuple[np.ndarray, ...]:
        """Fine-tuning arrays: the cell's m target train rows and the validation rows."""
        ds, rep = self.dataset, self.repetitions[cell.repetition]
        train = rep.target_train(cell.m)
        return ds.target_X[train], ds.target_y[train], ds.target_X[rep.val], ds.target_y[rep.val]


def size_key(n: int) -> str:
    """How a size is named to people: in lines, run names, `s2r status`."""
    return "baseline" if n == 0 else f"n={n}"


def repetition_seed(study_seed: int, r: int) -> int:
    return study_seed * 1009 + r


def make_repetition(ds: Dataset, split: SplitConfig, index: int, seed: int) -> Repetition:
    """Split the target, then permute the source rows that the split allows into the pool."""
    rng = np.random.default_rng(seed)
    n_t = len(ds.target_y)
    perm = rng.permutation(n_t)
    n_test = round(split.test * n_t)
    n_val = round(split.val * (n_t - n_test))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]

    eligible = np.arange(len(ds.source_y))
    excluded = 0
    if not split.allow_test_ids_in_source:
        leak = np.isin(ds.source_ids, ds.target_ids[test])
        excluded = int(leak.sum())
        eligible = eligible[~leak]
    eligible = rng.permutation(eligible)
    n_hold = min(round(split.source_holdout * len(eligible)), split.source_holdout_max)
    n_hold = max(n_hold, min(10, len(eligible) // 2))
    return Repetition(index, seed, train, val, test, eligible[n_hold:], eligible[:n_hold], excluded)


def make_plan(cfg: StudyConfig, ds: Dataset) -> Plan:
    """Build all repetitions and cells, refusing a grid the data cannot fill."""
    reps = [
        make_repetition(ds, cfg.split, r, repetition_seed(cfg.seed, r))
        for r in range(cfg.repetitions_available)
    ]
    for rep in reps:
        for part in ("train", "val", "test"):
            if len(getattr(rep, part)) == 0:
                raise ConfigError(
                    f"split: {len(ds.target_y)} target rows leave no {part} rows "
                    f"(split.test={cfg.split.test}, split.val={cfg.split.val})"
                )
    pool = min(len(rep.pool) for rep in reps)
    too_big = [n for n in cfg.sizes if n > pool]
    if too_big:
        raise ConfigError(
            f"sizes: {too_big} exceed the source pool of {pool} rows (source rows minus the "
            f"hold-out of {len(reps[0].holdout)} and {reps[0].excluded_for_leakage} rows sharing "
            "an identifier with target test rows)"
        )
    train = min(len(rep.train) for rep in reps)
    too_many = [m for m in cfg.target_sizes or [] if m > train]
    if too_many:
        raise ConfigError(f"target_sizes: {too_many} exceed the {train} target train rows")
    return Plan(ds, reps, cell_grid(cfg))


def cell_grid(cfg: StudyConfig) -> list[Cell]:
    """Every cell of the study, baselines first, then sizes in increasing order, so that the
    reducer gets its early points soon."""
    m_grid: list[int | None] = list(cfg.target_sizes) if cfg.target_sizes else [None]
    return [Cell(n, r, m) for n in [0, *cfg.sizes] for m in m_grid for r in range(cfg.repetitions)]
