"""What every featurizer provides, and the chunked process pool that runs the expensive parts.

A featurizer does two things, in two passes, so that each is done once per distinct input:
`canonical` turns raw identifier tuples (one per id column) into canonical keys, and `featurize`
turns distinct keys into a fixed-width float matrix. Per-row numeric columns that are not part of
the entity (conditions such as temperature, or ready-made feature columns) go through
`row_features`, which is cheap and never cached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from s2r_ray import __version__
from s2r_ray.config import ConfigError
from s2r_ray.progress import Meter

T = TypeVar("T")
R = TypeVar("R")


class Rejection(NamedTuple):
    """Why an identifier has no key; `part` is the offending id column (0 for single-id keys)."""

    reason: str
    part: int = 0


class Options(BaseModel):
    """Base of each featurizer's options: unknown names are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Featurizer(ABC):
    """Canonical keys for identifiers and features for keys; subclasses are registered by name."""

    name: ClassVar[str]
    version: ClassVar[str]  # bump whenever the features of a key change: it invalidates the cache
    options_model: ClassVar[type[Options]] = Options
    n_ids: ClassVar[int | None] = 1  # id columns expected (None: any number)
    chunk_size: ClassVar[int] = 20_000  # items per process-pool task
    # True where a model reads the columns by position: dropping a constant one shifts the rest
    keep_constant: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        try:
            self.options = self.options_model.model_validate(options or {})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise ConfigError(f"featurizer {self.name!r} options: {problems}") from None

    @property
    @abstractmethod
    def feature_names(self) -> list[str]:
        """Names of the columns `featurize` returns, in order."""

    @abstractmethod
    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        """One canonical key (or the reason there is none) per identifier tuple."""

    @abstractmethod
    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        """float32 (len(keys), len(feature_names)); a row of NaN marks a key that failed."""

    def row_columns(self, available: Sequence[str]) -> list[str]:
        """Numeric table columns read per row as features, besides the conditions (none here)."""
        return []

    def row_features(
        self, table: pd.DataFrame, condition_columns: list[str]
    ) -> tuple[np.ndarray, list[str]]:
        """Per-row features appended after the key's: the conditions and `row_columns`, as read.

        `table` holds only validated rows, whose condition and row columns are finite floats.
        """
        names = list(condition_columns) + self.row_columns(list(table.columns))
        return table[names].to_numpy(np.float64, copy=True), names

    def cache_token(self) -> str:
        """Everything that decides a key's features, so a change of any of it misses the cache."""
        opts = self.options.model_dump_json()
        return f"{self.name}|{self.version}|{opts}|s2r_ray {__version__}|{self.library_versions()}"

    def library_versions(self) -> str:
        """Versions of the chemistry libraries whose output the features depend on."""
        return ""


def map_chunks(
    fn: Callable[[Sequence[T]], R],
    items: Sequence[T],
    chunk_size: int,
    pool: Executor | None,
    label: str = "featurizing",
    unit: str = "items",
    on_result: Callable[[Sequence[T], R], None] | None = None,
) -> list[R]:
    """fn over consecutive chunks of items: in the pool's workers (processes, or Ray tasks over
    a cluster) when there are several chunks, else here (a pool costs ~1 s to start, more than a
    single chunk takes). Several chunks make a stage long enough to show its progress, rate and
    ETA on stdout. `on_result(chunk, result)` sees each chunk as it arrives, in order (the cache
    keeps it, so an interrupted run resumes there)."""
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    if len(chunks) < 2:
        return [fn(c) for c in chunks]
    results = map(fn, chunks) if pool is None else pool.map(fn, chunks)
    out: list[R] = []
    with Meter(label, len(items), unit) as meter:
        for chunk, result in zip(chunks, results, strict=True):
            out.append(result)
            if on_result is not None:
                on_result(chunk, result)
            meter.add(len(chunk))
    return out


@contextmanager
def process_pool(workers: int) -> Iterator[Executor | None]:
    """Worker processes for featurization, started on first use; None (work here) for one.

    Spawned, not forked: the caller may hold threads (pyarrow, torch, Ray) that a fork would
    copy in a locked state.
    """
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        yield pool
