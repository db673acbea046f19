"""On-disk cache of canonical keys and features, so a second study on the same file starts fast.

One entry per (input file content, featurizer name, options, featurizer and library versions):
`<file>.<featurizer>.<digest>.keys.parquet` maps raw identifier tuples to canonical keys (or the
rejection reason) and `...features.parquet` maps keys to feature rows. An entry grows on demand:
a query that selects new rows of the same file adds their keys instead of starting over. While
features are computed, each finished chunk is kept in `...features.parts/` (named by its keys),
so a featurization interrupted after hours resumes with the chunks it lacks; the parts join the
entry when it is written. Writes go through `s2r_ray.atomic`, so concurrent studies never read a
half-written entry.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pandas as pd

from s2r_ray.atomic import atomic_path
from s2r_ray.data.featurizers import Featurizer, Rejection, map_chunks


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes: an edited file misses the cache, a touched or copied one not."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp)


class FeatureStore:
    """Keys and features of one input file under one featurizer; computes only what it lacks.

    `stats` counts the work done: ids_canonicalised and keys_featurized (computed now, in the
    pool's processes for large inputs; featurize_ms the time it took) and keys_cached (read from
    disk, finished chunks of an interrupted run included).
    """

    def __init__(
        self, cache_dir: Path, data_file: Path, featurizer: Featurizer, pool: Executor | None
    ) -> None:
        self.featurizer = featurizer
        self.pool = pool
        self.file_name = data_file.name
        token = f"{file_digest(data_file)}\n{featurizer.cache_token()}"
        digest = hashlib.sha256(token.encode()).hexdigest()[:24]
        stem = f"{data_file.name}.{featurizer.name}.{digest}"
        self.keys_path = cache_dir / f"{stem}.keys.parquet"
        self.features_path = cache_dir / f"{stem}.features.parquet"
        self.parts_path = cache_dir / f"{stem}.features.parts"
        self.stats: Counter[str] = Counter()

    def canonical(self, ids: list[tuple[str, ...]]) -> list[str | Rejection]:
        """Canonical key or rejection per distinct identifier tuple."""
        known = self._read_keys()
        missing = [t for t in ids if t not in known]
        if missing:
            chunks = self._map(self.featurizer.canonical, missing, "parsing identifiers", "ids")
            known.update(zip(missing, (r for chunk in chunks for r in chunk), strict=True))
            self._write_keys(known)
        self.stats["ids_canonicalised"] += len(missing)
        return [known[t] for t in ids]

    def features(self, keys: list[str]) -> np.ndarray:
        """float32 features per distinct key, in order; NaN rows where featurization failed."""
        names = self.featurizer.feature_names
        table = self._read_features(names)
        missing = [k for k, at in zip(keys, table.index.get_indexer(keys), strict=True) if at < 0]
        if missing:
            what = f"featurizing ({self.featurizer.name})"
            start = time.perf_counter()
            chunks = self._map(self.featurizer.featurize, missing, what, "keys", self._keep_part)
            self.stats["featurize_ms"] += round(1000 * (time.perf_counter() - start))
            new = pd.DataFrame(
                np.vstack(chunks), index=pd.Index(missing, name="key"), columns=names
            )
            table = pd.concat([table, new]) if len(table) else new
        if missing or self.parts_path.is_dir():  # the parts of an interrupted run join the entry
            _write_parquet(table, self.features_path)
            shutil.rmtree(self.parts_path, ignore_errors=True)
        self.stats["keys_featurized"] += len(missing)
        self.stats["keys_cached"] += len(keys) - len(missing)
        return table.to_numpy(np.float32)[table.index.get_indexer(keys)]

    def _map(
        self,
        fn: Callable[[list], list],
        items: list,
        what: str,
        unit: str,
        on_result: Callable[[Sequence[str], np.ndarray], None] | None = None,
    ) -> list:
        """fn over chunks of items, in the pool's processes for large inputs."""
        size, pool = self.featurizer.chunk_size, self.pool
        return map_chunks(fn, items, size, pool, f"{self.file_name}: {what}", unit, on_result)

    def _keep_part(self, keys: Sequence[str], X: np.ndarray) -> None:
        """One finished chunk on disk, named by its keys, until the whole entry is written."""
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
        names = self.featurizer.feature_names
        part = pd.DataFrame(X, index=pd.Index(list(keys), name="key"), columns=names)
        self.parts_path.mkdir(parents=True, exist_ok=True)
        _write_parquet(part, self.parts_path / f"{name}.parquet")

    def _read_keys(self) -> dict[tuple[str, ...], str | Rejection]:
        if not self.keys_path.is_file():
            return {}
        df = pd.read_parquet(self.keys_path)
        # object arrays: iterating pandas' Arrow-backed strings directly is ~10x slower
        columns = {c: df[c].to_numpy(dtype=object) for c in df.columns}
        ids = zip(*(v for c, v in columns.items() if c.startswith("id_")), strict=True)
        results = (
            Rejection(reason, int(part)) if isinstance(reason, str) else key
            for key, reason, part in zip(
                columns["key"], columns["reason"], columns["part"], strict=True
            )
        )
        return dict(zip(ids, results, strict=True))

    def _write_keys(self, known: dict[tuple[str, ...], str | Rejection]) -> None:
        ids = list(known)
        results = list(known.values())
        columns: dict[str, list[object]] = {
            f"id_{j}": [t[j] for t in ids] for j in range(len(ids[0]))
        }
        columns["key"] = [None if isinstance(r, Rejection) else r for r in results]
        columns["reason"] = [r.reason if isinstance(r, Rejection) else None for r in results]
        columns["part"] = [r.part if isinstance(r, Rejection) else 0 for r in results]
        _write_parquet(pd.DataFrame(columns), self.keys_path)

    def _read_features(self, names: list[str]) -> pd.DataFrame:
        empty = pd.DataFrame(columns=names, index=pd.Index([], name="key"), dtype=np.float32)
        files = [self.features_path] if self.features_path.is_file() else []
        files += sorted(self.parts_path.glob("*.parquet")) if self.parts_path.is_dir() else []
        tables = [t for t in map(pd.read_parquet, files) if list(t.columns) == names]
        if not tables:  # none, or stale: code changed unversioned
            return empty
        table = pd.concat(tables) if len(tables) > 1 else tables[0]
        return table[~table.index.duplicated()]
