"""Reading, cleaning, keys, reduction, join and cache of the table loader, on small files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2r_ray.config import ConfigError, DataConfig, SyntheticData
from s2r_ray.data import DataError, load_dataset

TARGET = "formula,gap\nFe2O3,2.2\nNaCl,8.5\nSiO2,9.0\nGaAs,1.4\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def data_config(tmp_path: Path, source: Path, target: Path, **source_fields) -> DataConfig:
    spec = {"id_columns": ["formula"], "value_column": "gap", "featurizer": "composition"}
    return DataConfig.model_validate(
        {
            "kind": "tables",
            "source": spec | {"path": str(source)} | source_fields,
            "target": spec | {"path": str(target)},
            "cache_dir": str(tmp_path / "cache"),
            "units": "eV",
        }
    )


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return write(tmp_path / "target.csv", TARGET)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("min", 1.0), ("max", 6.0), ("mean", 3.125), ("median", 2.75), ("first", 3.5)],
)
def test_rows_of_one_composition_are_reduced_by_the_rule_and_counted(
    tmp_path, target, rule, expected
):
    source = write(
        tmp_path / "s.csv", "formula,gap\nFe2O3,3.5\nNaCl,7.0\nFe4O6,1.0\nFeO1.5,2.0\nFe2O3,6.0\n"
    )
    ds = load_dataset(data_config(tmp_path, source, target, reduce=rule), workers=1)
    assert list(ds.source_ids) == ["Fe2O3", "ClNa"]  # order of first appearance
    assert ds.source_y[0] == pytest.approx(expected)
    assert ds.counts["source_duplicates_reduced"] == 3
    assert ds.counts["source_rows"] == 2


def test_bad_rows_are_counted_and_written_with_file_row_column_and_reason(tmp_path, target):
    source = write(
        tmp_path / "s.csv",
        "formula,gap\n"
        "Fe2O3,2.0\n"  # row 1: fine
        "Xx2,1.0\n"  # row 2: no such element
        "NaCl,\n"  # row 3: empty value
        "SiO2,abc\n"  # row 4: text
        "GaAs,inf\n"  # row 5: not finite
        "MgO,-3\n"  # row 6: outside valid_range
        ",1.0\n"  # row 7: no formula
        "ZnO,nan\n",  # row 8: NaN spelled out in a numeric column
    )
    out = tmp_path / "out"
    cfg = data_config(tmp_path, source, target, valid_range=(0, 20))
    ds = load_dataset(cfg, rejected_csv=out / "rejected_rows.csv")
    rejected = pd.read_csv(out / "rejected_rows.csv", keep_default_na=False)
    assert list(rejected.columns) == ["file", "row", "side", "column", "value", "reason"]
    assert rejected[["row", "column", "reason"]].values.tolist() == [
        [2, "formula", "invalid_formula"],
        [3, "gap", "missing_value"],
        [4, "gap", "non_numeric_value"],
        [5, "gap", "non_finite_value"],
        [6, "gap", "out_of_range"],
        [7, "formula", "missing_id"],
        [8, "gap", "missing_value"],
    ]
    assert set(rejected["file"]) == {str(source)} and set(rejected["side"]) == {"source"}
    assert rejected["value"].tolist() == ["Xx2", "", "abc", "inf", "-3", "", "nan"]
    assert ds.counts["source_rows_read"] == 8 and ds.counts["source_rows"] == 1
    assert ds.counts["source_rejected_missing_value"] == 2
    assert ds.counts["source_rejected_invalid_formula"] == 1
    assert ds.counts["target_rows"] == 4


def test_the_formula_nan_is_sodium_nitride_not_a_missing_value(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nNaN,0.5\nNA,0.1\nFe2O3,2.0\n")
    ds = load_dataset(data_config(tmp_path, source, target))
    assert list(ds.source_ids) == ["NNa", "Fe2O3"]
    assert ds.counts["source_rejected_invalid_formula"] == 1  # "NA": read as text, no element A
    assert ds.counts["source_rows"] == 2


def test_a_missing_file_or_column_is_an_error_naming_it(tmp_path, target):
    with pytest.raises(DataError, match=r"nowhere\.csv: no such data file"):
        load_dataset(data_config(tmp_path, tmp_path / "nowhere.csv", target))
    source = write(tmp_path / "s.csv", "formula,band_gap\nFe2O3,2.0\n")
    with pytest.raises(DataError, match=r"s\.csv: no column 'gap' \(data\.source value column\)"):
        load_dataset(data_config(tmp_path, source, target))


def test_a_missing_data_file_says_which_unset_variable_to_set(tmp_path, target, monkeypatch):
    monkeypatch.delenv("S2R_DATA_DIR", raising=False)
    cfg = data_config(tmp_path, target, target)
    cfg.source.path = "${S2R_DATA_DIR:-" + str(tmp_path / "shared") + "}/gaps.csv"
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'shared' / 'gaps.csv'}: no such data file")
    assert "data.source.path" in message and "export S2R_DATA_DIR=" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("s.csv", b"", "the file is empty"),
        ("s.csv", "formula,gap\ncaf\xe9,1.0\n".encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
        ("s.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "not UTF-8 text (byte 0x89)"),
        ("s.csv", b"\x00" * 4096, "NUL bytes in the first line"),
        ("s.csv.gz", b"formula,gap\nFe2O3,1.0\n", "Not a gzipped file"),
        ("s.parquet", b"formula,gap\nFe2O3,1.0\n", "Parquet magic bytes not found"),
    ],
    ids=["empty", "latin-1", "png", "nul", "not-gzip", "not-parquet"],
)
def test_a_file_that_is_no_readable_table_is_an_error_naming_it(
    tmp_path, target, name, content, words
):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset(data_config(tmp_path, source, target))
    message = str(e.value)
    assert message.startswith(f"{source}: ") and words in message and "\n" not in message


def test_a_side_with_no_rows_left_is_an_error_after_its_rows_are_written(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nXx,1.0\nFe2O3,\nFe0O3,2.0\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"s\.csv: no source rows left.*invalid_formula=1") as e:
        load_dataset(data_config(tmp_path, source, target), rejected_csv=out / "rejected_rows.csv")
    assert str(out / "rejected_rows.csv") in str(e.value)
    rejected = pd.read_csv(out / "rejected_rows.csv", keep_default_na=False)
    assert rejected[["row", "side", "reason"]].values.tolist() == [
        [1, "source", "invalid_formula"],
        [2, "source", "missing_value"],
        [3, "source", "zero_or_negative_amount"],
    ]


def test_a_header_only_table_is_a_side_with_no_rows(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\n")
    with pytest.raises(DataError, match=r"s\.csv: no source rows left.*source_rows_read=0"):
        load_dataset(data_config(tmp_path, source, target))


def test_query_selects_rows_and_a_bad_query_names_the_file(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap,load\nFe2O3,2.0,0.49\nNaCl,7.0,9.8\n")
    ds = load_dataset(data_config(tmp_path, source, target, query="load < 1"))
    assert list(ds.source_ids) == ["Fe2O3"]
    assert ds.counts["source_rows_not_selected"] == 1
    with pytest.raises(DataError, match=r"s\.csv: data\.source\.query 'lod < 1' failed"):
        load_dataset(data_config(tmp_path, source, target, query="lod < 1"))
    with pytest.raises(DataError, match=r"query 'load\.foo\(\)' failed: .*no attribute 'foo'"):
        load_dataset(data_config(tmp_path, source, target, query="load.foo()"))


def test_duplicates_that_disagree_are_counted_and_named_in_a_warning(tmp_path, target, caplog):
    # values 1..9 (interquartile range 2.1, tolerance 0.21): Fe2O3 spreads 1.0, NaCl 0.1
    source = write(
        tmp_path / "s.csv",
        "formula,gap\nFe2O3,2.0\nNaCl,7.0\nFe4O6,3.0\nNaCl,7.1\nSiO2,9.0\nGaAs,1.0\nKCl,6.0\n",
    )
    ds = load_dataset(data_config(tmp_path, source, target))
    assert ds.counts["source_conflicting_duplicates"] == 1
    assert ds.counts["target_conflicting_duplicates"] == 0
    assert ds.source_y[list(ds.source_ids).index("Fe2O3")] == pytest.approx(2.5)  # still reduced
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(source) in warning and "1 source key(s)" in warning and "Fe2O3 (1)" in warning


def test_target_reference_is_the_reduced_computed_value_of_the_same_key(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nFe4O6,2.0\nFe2O3,1.0\nSiO2,5.5\nKCl,6.0\n")
    ds = load_dataset(data_config(tmp_path, source, target, reduce="min"))
    np.testing.assert_allclose(ds.target_reference, [1.0, np.nan, 5.5, np.nan])
    assert ds.counts["joined_overlap"] == 2
    assert ds.units == "eV" and ds.property_name == "y"


def test_features_constant_over_both_sides_are_dropped_and_counted(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nFe2O3,2.0\nKCl,6.0\n")
    ds = load_dataset(data_config(tmp_path, source, target))
    assert "frac_Xe" not in ds.feature_names and "frac_Fe" in ds.feature_names
    assert ds.counts["dropped_constant_features"] == 18 * 5 + 118 - ds.n_features
    assert ds.counts["features"] == ds.n_features
    assert np.ptp(np.vstack([ds.source_X, ds.target_X]), axis=0).min() > 0


def test_tables_whose_features_are_all_constant_are_an_error(tmp_path):
    table = write(tmp_path / "t.csv", "formula,gap\nFe2O3,1.0\nFe4O6,2.0\n")
    with pytest.raises(DataError, match="every feature is constant"):
        load_dataset(data_config(tmp_path, table, table))


def test_conditions_are_part_of_the_key_and_of_the_features(tmp_path):
    text = "p,s,T,chi\n*CC*,CCO,25,0.5\n[*]CC[*],OCC,25.0,0.7\n*CC*,CCO,50,0.4\n"
    source = write(tmp_path / "s.csv", text)
    spec = {
        "path": str(source),
        "id_columns": ["p", "s"],
        "condition_columns": ["T"],
        "value_column": "chi",
        "featurizer": "pair",
        "featurizer_options": {
            "polymer": {"n_bits": 16, "descriptors": ["MolWt"]},
            "temperature_column": "T",
            "temperature_unit": "C",
        },
    }
    cfg = DataConfig(kind="tables", source=spec, target=spec, cache_dir=str(tmp_path / "c"))
    ds = load_dataset(cfg)
    assert list(ds.source_ids) == ["*CC*|CCO|25", "*CC*|CCO|50"]
    np.testing.assert_allclose(ds.source_y, [0.6, 0.4])
    assert ds.counts["source_duplicates_reduced"] == 1
    t = ds.source_X[:, ds.feature_names.index("inverse_temperature_K")]
    np.testing.assert_allclose(t, [1 / 298.15, 1 / 323.15], rtol=1e-6)


def test_both_sides_must_use_the_same_featurizer(tmp_path, target):
    cfg = data_config(tmp_path, target, target)
    cfg.target.featurizer_options = {"element_fractions": False}
    with pytest.raises(ConfigError, match="same featurizer"):
        load_dataset(cfg)


def test_parquet_input_reads_like_csv(tmp_path, target):
    source = tmp_path / "s.parquet"
    pd.DataFrame({"formula": ["Fe2O3", "NaN"], "gap": [2.0, np.nan]}).to_parquet(source)
    ds = load_dataset(data_config(tmp_path, source, target))
    assert list(ds.source_ids) == ["Fe2O3"]
    assert ds.counts["source_rejected_missing_value"] == 1


def test_second_load_is_served_from_the_cache(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nFe2O3,2.0\nKCl,6.0\nFe4O6,1.0\n")
    cfg = data_config(tmp_path, source, target)
    first = load_dataset(cfg)
    assert first.counts["source_keys_featurized"] == 2
    assert first.counts["source_ids_canonicalised"] == 3
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 4 and all(p.endswith(".parquet") for p in cached)

    second = load_dataset(cfg)
    assert second.counts["source_keys_featurized"] == 0
    assert second.counts["source_ids_canonicalised"] == 0
    assert second.counts["source_keys_cached"] == 2
    assert second.counts["target_keys_cached"] == 4
    np.testing.assert_array_equal(first.source_X, second.source_X)

    cfg.source.featurizer_options = cfg.target.featurizer_options = {"element_fractions": False}
    assert load_dataset(cfg).counts["source_keys_featurized"] == 2  # new options: a new entry


def test_a_changed_file_misses_the_cache_and_new_rows_extend_it(tmp_path, target):
    source = write(tmp_path / "s.csv", "formula,gap\nFe2O3,2.0\n")
    cfg = data_config(tmp_path, source, target)
    load_dataset(cfg)
    write(source, "formula,gap\nFe2O3,2.0\nKCl,6.0\n")
    assert load_dataset(cfg).counts["source_keys_featurized"] == 2
    cfg.source.query = "gap > 3"
    assert load_dataset(cfg).counts["source_keys_featurized"] == 0


def test_synthetic_kind_needs_no_files():
    ds = load_dataset(DataConfig(kind="synthetic", synthetic=SyntheticData(n_source=50)))
    assert len(ds.source_y) == 50
