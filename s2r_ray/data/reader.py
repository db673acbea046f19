"""A table file read in chunks of rows through pyarrow, so a 10^7-row source never sits in memory
whole: the loader checks, keys and keeps a few columns of each chunk before the next is read.

CSV (optionally .gz) cells are read as text first, with the empty cell the only missing value
(pandas' `keep_default_na=False`: the formula "NaN", sodium nitride, stays a formula); then in
each chunk every column but the id columns whose cells all parse as numbers becomes numeric
(pyarrow's parse, correctly rounded as pandas' is: the numbers equal a whole-table
`pd.read_csv`'s). Parquet columns keep
their stored types; id columns become text. Each chunk's index is its rows' 0-based position in
the file, so a problem found in any chunk names its true row.

A file that is not a readable table (empty, binary, not UTF-8, corrupt, a row of the wrong
width) is a `DataError` naming it, not a parser traceback.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pa_compute
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from s2r_ray.config import UserError

CHUNK_ROWS = 1 << 16  # rows a chunk holds: a few MiB of a narrow table, ~50 MiB of 64 columns
TABLE_FORMATS = "expected a UTF-8 CSV (optionally .gz) or a Parquet file"


class DataError(UserError):
    """A problem with an input table, naming file and column, so it is fixed before training."""


def table_columns(path: Path) -> list[str]:
    """The column names of the file, read from its header or schema alone."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    with _translated_errors(path):
        return _columns(path)


def read_chunks(
    path: Path, id_columns: list[str], columns: list[str] | None, rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The file's rows, `rows` at a time (at least one chunk, empty for a header-only file).

    `columns` (None: all) are the ones read; id columns come as text, an empty cell as NaN.
    """
    names = table_columns(path)
    chosen = names if columns is None else [c for c in names if c in columns]
    batches = _parquet_batches(path, chosen) if _is_parquet(path) else _csv_batches(path, chosen)
    start = 0
    with _translated_errors(path):
        for table in _rebatched(batches, rows, pa.schema([(c, pa.string()) for c in chosen])):
            if _is_parquet(path):
                chunk = _ids_as_text(table.to_pandas(), id_columns)
            else:
                chunk = _numbers_where_all_parse(table, id_columns).to_pandas()
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            start += len(chunk)
            yield chunk


def read_table(path: Path, id_columns: list[str]) -> pd.DataFrame:
    """The whole file as one frame (for tables that are small by nature, e.g. results)."""
    return pd.concat(read_chunks(path, id_columns, None))


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def _columns(path: Path) -> list[str]:
    if _is_parquet(path):
        schema = pq.ParquetFile(path).schema_arrow
        stored_index = {
            c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
        }
        return [c for c in schema.names if c not in stored_index]
    header = pd.read_csv(path, nrows=0).columns
    if any("\x00" in str(c) for c in header):
        raise ValueError("NUL bytes in the first line: a binary file")
    return [str(c) for c in header]


def _parquet_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as f:
        yield from f.iter_batches(columns=columns, use_pandas_metadata=False)


def _csv_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    try:  # opening reads the first block already
        yield from pa_csv.open_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                include_columns=columns,
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        if "UTF8" in str(e):  # name the byte, as a text reader would
            raise _first_undecodable(path) from None
        raise


def _rebatched(
    batches: Iterator[pa.RecordBatch], rows: int, empty: pa.Schema
) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one shorter) from batches of any length."""
    pending: list[pa.RecordBatch] = []
    held = 0
    yielded = False
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            yielded = True
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held or not yielded:
        yield pa.Table.from_batches(pending, schema=None if pending else empty)


def _ids_as_text(chunk: pd.DataFrame, id_columns: list[str]) -> pd.DataFrame:
    """A Parquet chunk's id columns as text (an integer id is an identifier, not a number)."""
    for c in set(id_columns) & set(chunk.columns):
        chunk[c] = chunk[c].map(lambda v: v if pd.isna(v) else str(v))
    return chunk


def _numbers_where_all_parse(table: pa.Table, id_columns: list[str]) -> pa.Table:
    """A CSV chunk's columns, all text as read, with those (but the ids) whose every cell parses
    as an integer or a float converted, as a whole-table `pd.read_csv` would (pyarrow's parse of
    a decimal is the correctly rounded one, as pandas' is)."""
    for i, name in enumerate(table.column_names):
        if name in id_columns:
            continue
        for kind in (pa.int64(), pa.float64()):
            try:
                table = table.set_column(i, name, pa_compute.cast(table.column(i), kind))
                break
            except pa.ArrowInvalid:  # text: the loader reports cells that should be numbers
                continue
    return table


def _first_undecodable(path: Path) -> UnicodeDecodeError:
    """The decoding error at the file's first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with pa.input_stream(str(path)) as f:  # decompresses .gz
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                return e
    raise AssertionError(f"{path}: pyarrow found invalid UTF-8 that Python decodes")


@contextmanager
def _translated_errors(path: Path) -> Iterator[None]:
    """Parser, pyarrow and gzip failures as one-line `DataError`s naming the file."""
    try:
        yield
    except UserError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x}); {TABLE_FORMATS}"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; {TABLE_FORMATS}") from None
    except (ValueError, OSError, EOFError, zlib.error, pa.ArrowException) as e:
        problem = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot be read as a table ({problem}); {TABLE_FORMATS}") from None
