"""From two tables (computed source, experimental target) to one cleaned, featurized `Dataset`.

Per side: read in chunks of rows (CSV, CSV.gz or Parquet, `s2r_ray.data.reader`; the formula
"NaN", sodium nitride, stays a formula), and per chunk select rows with the optional query,
reject bad rows with a reason and keep only ids, value, conditions and per-row features (float32)
of the rest; then turn identifiers into canonical keys, featurize each distinct key once (cached
chunk by chunk, so an interrupted featurization resumes), and reduce the rows of one key by the
side's rule. Then join: the target's computed reference value, and the features that are
constant over both sides dropped.

Bad rows never crash a study and never vanish silently: each is counted by reason in
`Dataset.counts` and listed in the study's rejected_rows.csv. A missing or unreadable file, a
missing column, a failing query or a side left empty is a `DataError` naming the file, raised
before any training (rejected_rows.csv is written first, so an emptied side can be inspected).
Rows of one key whose values disagree by more than `CONFLICT_TOLERANCE` are still reduced, but
counted (`<side>_conflicting_duplicates`) and logged as a warning with examples.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s2r_ray.atomic import atomic_path
from s2r_ray.config import ConfigError, DataConfig, TableSpec
from s2r_ray.data.cache import FeatureStore
from s2r_ray.data.dataset import Dataset
from s2r_ray.data.featurizers import Featurizer, make_featurizer, process_pool
from s2r_ray.data.reader import CHUNK_ROWS, DataError, read_chunks, table_columns
from s2r_ray.data.synthetic import make_synthetic

log = logging.getLogger(__name__)

REJECTED_COLUMNS = ["file", "row", "side", "column", "value", "reason"]
# cell texts that mean "no value" in a numeric column (id columns keep them: "NaN" is a formula)
MISSING_TEXT = frozenset({"", "nan", "-nan", "na", "n/a", "null", "none"})
KEY_SEPARATOR = "|"
# rows of one key conflict when their values spread over more than this share of the side's
# interquartile range: scale-free, so it means the same for eV, K or GPa
CONFLICT_TOLERANCE = 0.1


@dataclass
class Side:
    """One table after cleaning and reduction: a row per canonical key."""

    keys: np.ndarray
    y: np.ndarray
    X: np.ndarray
    feature_names: list[str]
    rejected: pd.DataFrame
    counts: dict[str, int]


class _Rejections:
    """The first reason each row of a table is rejected for; later checks skip rejected rows."""

    def __init__(self, index: pd.Index, path: Path, side: str) -> None:
        self.path, self.side = path, side
        self.reason = pd.Series(None, index=index, dtype=object)
        self.column = pd.Series(None, index=index, dtype=object)
        self.value = pd.Series(None, index=index, dtype=object)

    @property
    def alive(self) -> pd.Series:
        return self.reason.isna()

    def add(self, mask: pd.Series, reason: str, column: str, raw: pd.Series) -> None:
        """Reject the rows where mask (indexed by any subset of rows) is True, unless already."""
        new = mask.reindex(self.reason.index, fill_value=False).astype(bool) & self.alive
        self.reason[new] = reason
        self.column[new] = column
        self.value[new] = ["" if pd.isna(v) else str(v) for v in raw[new]]  # empty cell: ""

    def frame(self) -> pd.DataFrame:
        bad = ~self.alive
        return pd.DataFrame(
            {
                "file": str(self.path),
                "row": self.reason.index[bad] + 1,  # the index is the 0-based data row as read
                "side": self.side,
                "column": self.column[bad].to_numpy(),
                "value": self.value[bad].to_numpy(),
                "reason": self.reason[bad].to_numpy(),
            },
            columns=REJECTED_COLUMNS,
        )


def _numeric(raw: pd.Series) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Parsed floats and the masks of the three ways a cell fails to be a finite number."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        parsed = raw.astype(float)
        missing = raw.isna()
    else:
        text = raw.astype(str).str.strip()
        parsed = pd.to_numeric(text.where(raw.notna()), errors="coerce").astype(float)
        missing = raw.isna() | text.str.lower().isin(MISSING_TEXT)
    return parsed, {
        "missing": missing,
        "non_numeric": parsed.isna() & ~missing,
        "non_finite": pd.Series(np.isinf(parsed), index=raw.index),
    }


@dataclass
class _Kept:
    """What the loader keeps of the rows that pass the per-chunk checks (every other column is
    dropped chunk by chunk): raw ids, value and conditions parsed, per-row features as float32
    with whether they were finite as read, and the rows rejected so far."""

    ids: pd.DataFrame
    numbers: pd.DataFrame
    X_rows: np.ndarray
    finite: np.ndarray
    row_names: list[str]
    rejected: list[pd.DataFrame]
    counts: dict[str, int]


def _data_path(spec: TableSpec, side: str) -> Path:
    """The side's file, or a `DataError` naming any unset variable whose default made its path."""
    path = spec.resolved_path()
    if not path.is_file():
        message = f"{path}: no such data file (data.{side}.path {spec.path!r})"
        for name in dict.fromkeys(re.findall(r"\$\{(\w+)", spec.path)):
            if name not in os.environ:
                message += (
                    f"; {name} is not set, so its default was used: export {name}=/path/to/data"
                )
        raise DataError(message)
    return path


def _scan(spec: TableSpec, side: str, featurizer: Featurizer, path: Path, chunk_rows: int) -> _Kept:
    """Read the file chunk by chunk: select, check the cells, compute the per-row features, and
    keep only what keying and reduction need (after checking every named column is there)."""
    columns = table_columns(path)
    row_columns = featurizer.row_columns(columns)
    roles = dict.fromkeys(spec.id_columns, "id") | {spec.value_column: "value"}
    roles |= dict.fromkeys(spec.condition_columns, "condition")
    roles |= dict.fromkeys(row_columns, "feature")
    for column, role in roles.items():
        if column not in columns:
            raise DataError(
                f"{path}: no column {column!r} (data.{side} {role} column); "
                f"the file has: {', '.join(columns)}"
            )
    parts: dict[str, list] = {"ids": [], "numbers": [], "X": [], "finite": [], "rejected": []}
    read = selected = 0
    row_names: list[str] = []
    chunks = read_chunks(path, spec.id_columns, None if spec.query else list(roles), chunk_rows)
    for rows_read, chunk in _selected(chunks, spec, side, path):
        read, selected = read + rows_read, selected + len(chunk)
        rejections = _Rejections(chunk.index, path, side)
        numbers = _validate_cells(spec, chunk, row_columns, rejections)
        alive = rejections.alive.to_numpy()
        X, row_names = featurizer.row_features(numbers[alive], spec.condition_columns)
        parts["ids"].append(chunk.loc[alive, spec.id_columns])
        parts["numbers"].append(numbers.loc[alive, [spec.value_column, *spec.condition_columns]])
        parts["X"].append(X.astype(np.float32))  # a chunk's float64, never the table's
        parts["finite"].append(np.isfinite(X).all(axis=1))
        parts["rejected"].append(rejections.frame())
    counts = {f"{side}_rows_read": read}
    if spec.query:
        counts[f"{side}_rows_not_selected"] = read - selected
    return _Kept(
        ids=pd.concat(parts["ids"]),
        numbers=pd.concat(parts["numbers"]),
        X_rows=np.concatenate(parts["X"]),
        finite=np.concatenate(parts["finite"]),
        row_names=row_names,
        rejected=parts["rejected"],
        counts=counts,
    )


def _selected(
    chunks: Iterator[pd.DataFrame], spec: TableSpec, side: str, path: Path
) -> Iterator[tuple[int, pd.DataFrame]]:
    """Per chunk, the rows read and those the query chose (evaluated within the chunk, so a
    query compares a row with constants or its own cells, not with the whole table)."""
    for chunk in chunks:
        read = len(chunk)
        if spec.query:
            try:
                chunk = chunk.query(spec.query)
            except Exception as e:  # the expression is the user's, and so is any failure of it
                problem = " ".join(str(e).split()) or type(e).__name__
                raise DataError(
                    f"{path}: data.{side}.query {spec.query!r} failed: {problem}"
                ) from None
        yield read, chunk


def _validate_cells(
    spec: TableSpec, table: pd.DataFrame, row_columns: list[str], rejections: _Rejections
) -> pd.DataFrame:
    """Reject rows with an empty id or a value/condition/feature cell that is no finite number
    (or a value outside valid_range); return those numeric columns parsed."""
    for c in spec.id_columns:
        empty = table[c].isna() | (table[c].astype(str).str.strip() == "")
        rejections.add(empty, "missing_id", c, table[c])
    numbers = pd.DataFrame(index=table.index)
    checks = [(spec.value_column, "value")]
    checks += [(c, "condition") for c in spec.condition_columns]
    checks += [(c, "feature") for c in row_columns]
    for c, what in checks:
        numbers[c], failures = _numeric(table[c])
        for kind, mask in failures.items():
            rejections.add(mask, f"{kind}_{what}", c, table[c])
    if spec.valid_range is not None:
        y, raw = numbers[spec.value_column], table[spec.value_column]
        rejections.add(~y.between(*spec.valid_range) & y.notna(), "out_of_range", y.name, raw)
    return numbers


def _canonical_keys(
    spec: TableSpec, table: pd.DataFrame, store: FeatureStore, rejections: _Rejections
) -> pd.Series:
    """Canonical key per surviving row: each distinct identifier canonicalised once, rows mapped
    to it by integer codes (no Python object per row besides its key)."""
    alive = rejections.alive
    parts = [table.loc[alive, c].astype(str).str.strip() for c in spec.id_columns]
    codes, distinct = pd.MultiIndex.from_arrays(parts).factorize()  # in order of appearance
    results = store.canonical(list(distinct))
    keys = np.array([r if isinstance(r, str) else None for r in results], dtype=object)
    is_key = np.array([isinstance(r, str) for r in results], dtype=bool)[codes]
    index = table.index[alive]
    for rejection in {r for r in results if not isinstance(r, str)}:
        column = spec.id_columns[rejection.part]
        hit = np.array([r == rejection for r in results], dtype=bool)[codes]
        rejections.add(pd.Series(hit, index=index), rejection.reason, column, table[column])
    return pd.Series(keys[codes[is_key]], index=index[is_key], dtype=object)


def load_side(
    spec: TableSpec,
    side: str,
    featurizer: Featurizer,
    cache_dir: Path,
    pool: Executor | None,
    chunk_rows: int = CHUNK_ROWS,
) -> Side:
    """Read, select, clean, key, featurize and reduce one table (see the module docstring)."""
    if featurizer.n_ids is not None and len(spec.id_columns) != featurizer.n_ids:
        raise ConfigError(
            f"data.{side}.id_columns: featurizer {featurizer.name!r} takes {featurizer.n_ids} "
            f"id column(s), got {spec.id_columns}"
        )
    path = _data_path(spec, side)
    kept = _scan(spec, side, featurizer, path, chunk_rows)
    rejections = _Rejections(kept.ids.index, path, side)  # from here on, over the kept rows
    store = FeatureStore(cache_dir, path, featurizer, pool)
    entity = _canonical_keys(spec, kept.ids, store, rejections)
    first_id, first_column = kept.ids[spec.id_columns[0]], spec.id_columns[0]

    distinct = list(dict.fromkeys(entity))
    X_distinct = store.features(distinct)
    failed = entity.isin(
        [k for k, bad in zip(distinct, np.isnan(X_distinct).any(axis=1), strict=True) if bad]
    )
    rejections.add(failed, "featurization_failed", first_column, first_id)
    entity = entity[~failed]

    at = kept.ids.index.get_indexer(entity.index)
    finite = kept.finite[at]
    bad = pd.Series(~finite, index=entity.index)
    rejections.add(bad, "non_finite_feature", first_column, first_id)
    entity, X_rows = entity[finite], kept.X_rows[at[finite]]  # one gather of the kept rows

    rejected = pd.concat([*kept.rejected, rejections.frame()], ignore_index=True)
    rejected = rejected.sort_values("row", kind="stable", ignore_index=True)
    counts = kept.counts | {f"{side}_{k}": v for k, v in store.stats.items()}
    counts |= {f"{side}_rejected_{r}": int(n) for r, n in rejected["reason"].value_counts().items()}
    numbers = kept.numbers.loc[entity.index]
    row_key = entity  # a row's key: its entity plus its condition values, as the shortest
    for c in spec.condition_columns:  # round-trip text without exponent (25.0 -> '25')
        text = numbers[c].map(lambda v: np.format_float_positional(v, trim="-"))
        row_key = row_key + KEY_SEPARATOR + text
    # one row per key, in order of first appearance: the value reduced by the side's rule, the
    # per-row features averaged (where a key has several rows: a mean of one is the row)
    codes, uniques = pd.factorize(row_key)
    keys = np.asarray(uniques, dtype=str)
    y = numbers[spec.value_column].groupby(codes).agg(spec.reduce).to_numpy()
    if len(keys) < len(codes):
        X_rows = pd.DataFrame(X_rows).groupby(codes).mean().to_numpy(np.float32)
    entity_of_key = entity.groupby(codes).first().to_numpy()
    counts[f"{side}_duplicates_reduced"] = len(entity) - len(keys)
    conflicts = _conflicts(row_key, numbers[spec.value_column])
    counts[f"{side}_conflicting_duplicates"] = len(conflicts)
    if len(conflicts):
        spreads = ", ".join(f"{k} ({v:.4g})" for k, v in conflicts.nlargest(5).items())
        log.warning(
            "%s: %d %s key(s) have rows whose %s values spread over more than %s of the "
            "side's interquartile range (%s_conflicting_duplicates), reduced by %s anyway; "
            "largest spreads: %s",
            *(path, len(conflicts), side, spec.value_column, f"{CONFLICT_TOLERANCE:.0%}"),
            *(side, spec.reduce, spreads),
        )
    counts[f"{side}_rows"] = len(keys)  # 0 here is an error, raised once rejected rows are out
    X_keys = X_distinct[pd.Index(distinct).get_indexer(entity_of_key)]
    if X_keys.shape[1] and X_rows.shape[1]:  # no copy of either where the other is empty
        X_keys = np.hstack([X_keys, X_rows])
    return Side(
        keys=keys,
        y=y,
        X=X_keys if X_keys.shape[1] else X_rows,
        feature_names=featurizer.feature_names + kept.row_names,
        rejected=rejected,
        counts=counts,
    )


def _conflicts(row_key: pd.Series, values: pd.Series) -> pd.Series:
    """Spread (max - min) of each key whose rows disagree by more than `CONFLICT_TOLERANCE` of
    the interquartile range of all rows: duplicates a reduction hides, though they disagree."""
    groups = values.groupby(row_key, sort=False)
    spread = groups.max() - groups.min()
    low, high = values.quantile([0.25, 0.75]) if len(values) else (0.0, 0.0)
    return spread[spread > CONFLICT_TOLERANCE * (high - low)]


def load_dataset(
    cfg: DataConfig,
    rejected_csv: Path | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Dataset:
    """The study's `Dataset`: synthetic, or the source and target tables cleaned, keyed, joined.

    `workers` bounds the featurization processes (default: all CPUs). They are spawned, so a
    script calling this with workers > 1 needs the usual `if __name__ == "__main__":` guard.
    `executor` (a cluster's, `s2r_ray.study.fanout.RayPool`) featurizes instead of them.
    `rejected_csv` (a study's: `StudyFolder.rejected_rows_path`) receives the rejected rows.
    """
    if cfg.kind == "synthetic":
        return make_synthetic(cfg.synthetic)
    src, tgt = cfg.source, cfg.target
    assert src is not None and tgt is not None  # DataConfig guarantees both for kind 'tables'
    if (src.featurizer, src.featurizer_options) != (tgt.featurizer, tgt.featurizer_options):
        raise ConfigError(
            "data.source and data.target must use the same featurizer and featurizer_options: "
            f"got {src.featurizer} {src.featurizer_options} "
            f"and {tgt.featurizer} {tgt.featurizer_options}"
        )
    featurizer = make_featurizer(src.featurizer, src.featurizer_options)
    cache_dir = Path(cfg.cache_dir).expanduser()
    workers = workers or len(os.sched_getaffinity(0))  # the CPUs a container really grants
    with process_pool(1 if executor else workers) as local:  # started only if a side needs it
        pool = executor or local
        source = load_side(src, "source", featurizer, cache_dir, pool)
        target = load_side(tgt, "target", featurizer, cache_dir, pool)
    if rejected_csv is not None:  # before any check below: the rejected rows explain a failed one
        rejected = pd.concat([source.rejected, target.rejected], ignore_index=True)
        with atomic_path(rejected_csv) as tmp:
            rejected.to_csv(tmp, index=False)
    where = f"; rejected rows are listed in {rejected_csv}" if rejected_csv is not None else ""
    for spec, side, loaded in ((src, "source", source), (tgt, "target", target)):
        if len(loaded.keys) == 0:  # why: its counts, and where its rejected rows are listed
            summary = ", ".join(f"{k}={v}" for k, v in loaded.counts.items())
            raise DataError(
                f"{spec.resolved_path()}: no {side} rows left after selection and cleaning "
                f"({summary}){where}"
            )
    if source.feature_names != target.feature_names:
        raise DataError(
            f"{tgt.resolved_path()}: target features differ from the source's "
            f"({sorted(set(source.feature_names) ^ set(target.feature_names))[:10]}); "
            "condition and feature columns must have the same names on both sides"
        )

    reference = pd.Series(source.y, index=source.keys).reindex(target.keys).to_numpy()
    high = np.maximum(source.X.max(axis=0), target.X.max(axis=0))
    varies = high > np.minimum(source.X.min(axis=0), target.X.min(axis=0))
    if not varies.any():
        raise DataError(
            f"{src.resolved_path()}, {tgt.resolved_path()}: every feature is constant over "
            "both tables, nothing to learn from"
        )
    varies |= featurizer.keep_constant  # a layout read by position keeps every column
    counts = source.counts | target.counts
    counts |= {
        "joined_overlap": int(np.isfinite(reference).sum()),
        "features": int(varies.sum()),
        "dropped_constant_features": int((~varies).sum()),
    }
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return Dataset(
        source_X=source.X[:, varies],
        source_y=source.y,
        source_ids=source.keys,
        target_X=target.X[:, varies],
        target_y=target.y,
        target_ids=target.keys,
        feature_names=[n for n, v in zip(source.feature_names, varies, strict=True) if v],
        property_name=cfg.property,
        units=cfg.units or tgt.units or src.units,
        target_reference=reference,
        counts=counts,
    )
