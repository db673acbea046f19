"""Tables read in chunks (#19): the loader's result does not depend on the chunk size, a bad row
in any chunk is reported with its row in the file, and an interrupted featurization resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2r_ray.config import TableSpec
from s2r_ray.data import DataError
from s2r_ray.data.featurizers import make_featurizer
from s2r_ray.data.reader import read_chunks
from s2r_ray.data.tables import load_side

# 43 rows: duplicates across chunks, the formula "NaN" (sodium nitride), "NA" (no element A),
# an empty value, text in a numeric column, an invalid formula and an empty formula
FORMULAS = [f"Fe{i}O{j}" for i in range(1, 6) for j in range(1, 8)] + ["NaN", "NA", "Fe2O3"]
FORMULAS += ["Xx2", "", "NaCl", "KCl", "GaAs"]
GAPS = [f"{0.1 * i:.1f}" for i in range(len(FORMULAS))]
GAPS[7], GAPS[30], GAPS[41] = "", "abc", "inf"


def _spec(path: Path) -> TableSpec:
    return TableSpec(
        path=str(path), id_columns=["formula"], value_column="gap", featurizer="composition"
    )


def _write(tmp_path: Path, kind: str, formulas: list[str], gaps: list[str]) -> Path:
    if kind == "csv":
        path = tmp_path / "s.csv"
        path.write_text(
            "formula,gap\n" + "".join(f"{f},{g}\n" for f, g in zip(formulas, gaps, strict=True))
        )
    else:  # numbers stored as numbers, an empty cell as null
        path = tmp_path / "s.parquet"
        values = pd.to_numeric(pd.Series(gaps), errors="coerce")
        ids = pd.Series(formulas, dtype=object).replace("", None)
        pd.DataFrame({"formula": ids, "gap": values}).to_parquet(path)
    return path


def _load(path: Path, cache: Path, chunk_rows: int):
    featurizer = make_featurizer("composition")
    return load_side(_spec(path), "source", featurizer, cache, None, chunk_rows=chunk_rows)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_table_loaded_in_chunks_equals_the_whole_table_load(tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path, kind, FORMULAS, GAPS)
    assert [len(c) for c in read_chunks(path, ["formula"], None, rows=7)] == [7] * 6 + [1]
    whole = _load(path, tmp_path / "whole", chunk_rows=1 << 20)
    chunked = _load(path, tmp_path / "chunked", chunk_rows=7)
    assert list(chunked.keys) == list(whole.keys) and "NNa" in chunked.keys
    np.testing.assert_array_equal(chunked.X, whole.X)
    np.testing.assert_array_equal(chunked.y, whole.y)
    pd.testing.assert_frame_equal(chunked.rejected, whole.rejected, check_dtype=False)
    assert chunked.counts == whole.counts | {
        "source_featurize_ms": chunked.counts["source_featurize_ms"]
    }
    assert chunked.counts["source_duplicates_reduced"] == 9  # FeO = Fe2O2 = ..., across chunks
    rejected = chunked.rejected[["row", "reason"]].values.tolist()
    reasons = {"csv": "non_numeric_value", "parquet": "missing_value"}  # parquet stored it null
    assert rejected == [
        [8, "missing_value"],
        [31, reasons[kind]],
        [37, "invalid_formula"],  # "NA"
        [39, "invalid_formula"],  # "Xx2"
        [40, "missing_id"],
        [42, "non_finite_value"],
    ]


def test_a_bad_row_in_a_later_chunk_is_reported_with_its_row_in_the_file(tmp_path: Path) -> None:
    formulas = [f"Fe{i}O{j}" for i in range(1, 5) for j in range(1, 6)]
    gaps = [f"{0.5 + i}" for i in range(len(formulas))]
    gaps[17] = "n/a"  # after three chunks of numbers: the column becomes text in this chunk only
    path = _write(tmp_path, "csv", formulas, gaps)
    side = _load(path, tmp_path / "cache", chunk_rows=5)
    row = side.rejected.iloc[0]
    assert (row["row"], row["column"], row["value"], row["reason"]) == (
        18,
        "gap",
        "n/a",
        "missing_value",
    )
    assert str(path) == row["file"] and len(side.rejected) == 1

    with path.open("a") as f:  # a row of the wrong width, far past the first chunk
        f.write("NaCl,1.0,7\n")
    with pytest.raises(DataError) as e:
        _load(path, tmp_path / "cache", chunk_rows=5)
    message = str(e.value)
    assert message.startswith(f"{path}: cannot be read as a table") and "NaCl,1.0,7" in message
    assert "\n" not in message


def test_an_interrupted_chunked_featurization_resumes_from_its_finished_chunks(
    tmp_path: Path, stop_featurizing
) -> None:
    path = _write(tmp_path, "csv", FORMULAS, GAPS)
    whole = _load(path, tmp_path / "whole", chunk_rows=1 << 20)
    stop_featurizing(3)
    with pytest.raises(KeyboardInterrupt):
        _load(path, tmp_path / "cache", chunk_rows=7)
    parts = list((tmp_path / "cache").glob("*.features.parts/*.parquet"))
    assert len(parts) == 2  # the two chunks finished before the interruption

    stop_featurizing(None)
    resumed = _load(path, tmp_path / "cache", chunk_rows=7)
    distinct = whole.counts["source_keys_featurized"]
    assert resumed.counts["source_keys_cached"] == 8
    assert resumed.counts["source_keys_featurized"] == distinct - 8
    assert not list((tmp_path / "cache").glob("*.features.parts"))  # parts joined the entry
    np.testing.assert_array_equal(resumed.X, whole.X)
    pd.testing.assert_frame_equal(resumed.rejected, whole.rejected, check_dtype=False)
