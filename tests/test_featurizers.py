"""Featurizers on known inputs, with the real pymatgen and RDKit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Element

from s2r_ray.config import ConfigError
from s2r_ray.data.featurizers import (
    REGISTRY,
    Rejection,
    make_featurizer,
    map_chunks,
    process_pool,
)
from s2r_ray.data.featurizers.composition import element_table

# Pauling electronegativities as pymatgen has them
X_FE, X_O = 1.83, 3.44


def feature(featurizer, key: str, name: str) -> float:
    return float(featurizer.featurize([key])[0, featurizer.feature_names.index(name)])


def test_mean_electronegativity_is_the_fraction_weighted_hand_computation():
    comp = make_featurizer("composition")
    (key,) = comp.canonical([("Fe2O3",)])
    mean = (2 * X_FE + 3 * X_O) / 5
    assert feature(comp, key, "mean_electronegativity") == pytest.approx(mean, abs=1e-5)
    assert feature(comp, key, "min_electronegativity") == pytest.approx(X_FE)
    assert feature(comp, key, "range_electronegativity") == pytest.approx(X_O - X_FE, abs=1e-5)
    mad = 0.4 * abs(X_FE - mean) + 0.6 * abs(X_O - mean)
    assert feature(comp, key, "mad_electronegativity") == pytest.approx(mad, abs=1e-5)
    assert feature(comp, key, "frac_O") == pytest.approx(0.6)
    assert feature(comp, key, "mean_valence_d") == pytest.approx(0.4 * 6)  # Fe: [Ar] 3d6 4s2


@pytest.mark.parametrize(
    ("formulas", "key"),
    [
        (["Hg0.7Cd0.3Te", "Hg0.35Cd0.15Te0.5", "Cd3Hg7Te10"], "Cd3Hg7Te10"),
        (["Fe2O3", "Fe4O6", "FeO1.5", "Fe0.4O0.6", "(Fe)2O3"], "Fe2O3"),
        (["Ca(OH)2", "CaO2H2"], "CaH2O2"),
        (["Ag(AuS)2"], "AgAu2S2"),
        (["NaN"], "NNa"),  # sodium nitride
        (["Fe0.3333O0.6667"], "FeO2"),  # fractions rounded to 4 decimals, as comp_key
        (["Li0.333Fe0.667O"], "Fe0.3335Li0.1665O0.5"),  # no integer multiplier up to 100
    ],
)
def test_formulas_normalise_to_one_reduced_formula(formulas, key):
    comp = make_featurizer("composition")
    assert comp.canonical([(f,) for f in formulas]) == [key] * len(formulas)


@pytest.mark.parametrize("formula", ["Xx2", "", "fe2o3", "H2O)", "Na·Cl"])
def test_invalid_formulas_are_rejected_with_their_reason(formula):
    comp = make_featurizer("composition")
    assert comp.canonical([(formula,)]) == [Rejection("invalid_formula")]


@pytest.mark.parametrize(
    "formula", ["Fe0O3", "O3Fe0", "Fe0.0O2", "Fe-1", "Fe-1O3", "(FeO)0", "Fe0"]
)
def test_a_zero_or_negative_amount_is_rejected_not_dropped(formula):
    # pymatgen reads "Fe0O3" as O3: the row would silently become another compound
    comp = make_featurizer("composition")
    assert comp.canonical([(formula,)]) == [Rejection("zero_or_negative_amount")]
    assert comp.canonical([("Fe0.5O3",)]) == ["FeO6"]  # a small positive amount stays


def test_element_properties_have_no_gaps_and_fill_with_the_mean():
    symbols, index, names, table = element_table()
    assert np.isfinite(table).all()
    # pymatgen has no Pauling electronegativity for neon: the fill is the mean over elements
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        known = [el.X for el in Element if np.isfinite(el.X)]
    assert len(known) < len(symbols)
    assert table[index["Ne"], names.index("electronegativity")] == pytest.approx(np.mean(known))
    assert table[index["Pb"], names.index("valence_f")] == 14  # filled 4f outside [Xe]


def test_composition_features_are_finite_and_all_named():
    comp = make_featurizer("composition")
    X = comp.featurize(["Fe2O3", "Og", "H", "CsXe0.5Lr"])
    assert X.shape == (4, len(comp.feature_names)) == (4, 18 * 5 + 118)
    assert np.isfinite(X).all()
    assert make_featurizer("composition", {"element_fractions": False}).featurize(["H"]).shape == (
        1,
        90,
    )


def test_polymer_fingerprint_is_stable_and_star_is_a_dummy_atom():
    poly = make_featurizer("polymer", {"n_bits": 64, "descriptors": ["MolWt", "RingCount"]})
    keys = poly.canonical([("*CC*",), ("[*]CC[*]",), ("C(*)C*",), ("CC",)])
    assert keys[:3] == ["*CC*"] * 3
    X = poly.featurize([keys[0], keys[3]])
    bits = {i: int(v) for i, v in enumerate(X[0, :64]) if v}
    assert bits == {16: 2, 29: 2, 34: 2, 53: 1, 55: 2}  # pinned: RDKit 2026.09, radius 2
    assert not np.array_equal(X[0, :64], X[1, :64])  # the chain ends show in the fingerprint
    # descriptors see the repeat unit capped with H: *CC* is ethane there
    np.testing.assert_allclose(X[0, 64:], X[1, 64:])
    assert X[0, 64] == pytest.approx(30.07, abs=0.01)


def test_polymer_descriptors_are_finite_where_dummy_atoms_would_give_nan():
    poly = make_featurizer("polymer", {"n_bits": 32})
    X = poly.featurize(["*CC(*)c1ccccc1", "*Oc1ccc(C(C)(C)c2ccc(OC(*)=O)cc2)cc1"])
    assert np.isfinite(X).all()
    charge = poly.feature_names.index("rdkit_MaxPartialCharge")
    assert X[1, charge] > 0


def test_invalid_smiles_is_rejected_and_rdkit_stays_quiet(capfd):
    poly = make_featurizer("polymer", {"n_bits": 32, "descriptors": "none"})
    assert poly.canonical([("C1CC",), ("*CC(",)]) == [Rejection("invalid_smiles")] * 2
    assert "SMILES Parse Error" not in capfd.readouterr().err


def test_a_repeat_unit_that_cannot_be_capped_fails_as_nan_not_an_exception():
    poly = make_featurizer("polymer", {"n_bits": 32, "descriptors": "none"})
    assert np.isnan(poly.featurize(["*=CC=*"])).all()


def test_pair_concatenates_both_partners_and_uses_inverse_kelvin():
    opts = {"polymer": {"n_bits": 32, "descriptors": ["MolWt"]}, "temperature_column": "T"}
    pair = make_featurizer("pair", opts | {"temperature_unit": "C"})
    (key,) = pair.canonical([("[*]CC[*]", "OCC")])
    assert key == "*CC*|CCO"
    X = pair.featurize([key])
    names = pair.feature_names
    assert X[0, names.index("polymer_rdkit_MolWt")] == pytest.approx(30.07, abs=0.01)
    assert X[0, names.index("solvent_rdkit_MolWt")] == pytest.approx(46.07, abs=0.01)
    rows, row_names = pair.row_features(pd.DataFrame({"T": [25.0, 100.0]}), ["T"])
    assert row_names == ["inverse_temperature_K"]
    np.testing.assert_allclose(rows[:, 0], [1 / 298.15, 1 / 373.15])
    assert pair.canonical([("*CC*", "C1C")]) == [Rejection("invalid_smiles", part=1)]


def test_columns_featurizer_reads_named_or_prefixed_columns():
    table = pd.DataFrame({"f_a": [1.0], "f_b": [2.0], "T": [300.0], "other": [9.0]})
    by_prefix = make_featurizer("columns", {"prefix": "f_"})
    X, names = by_prefix.row_features(table, ["T"])
    assert names == ["T", "f_a", "f_b"] and X.tolist() == [[300.0, 1.0, 2.0]]
    assert by_prefix.canonical([(" id 1 ", "x")]) == ["id 1|x"]
    assert by_prefix.featurize(["id 1|x"]).shape == (1, 0)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("magpie", {}, "unknown featurizer 'magpie'"),
        ("polymer", {"nbits": 8}, "nbits"),
        ("polymer", {"descriptors": ["MolWeight"]}, "MolWeight"),
        ("columns", {}, "exactly one of"),
        ("pair", {"temperature_unit": "F"}, "temperature_unit"),
    ],
)
def test_bad_featurizer_names_and_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_featurizer(name, options)


def test_every_registered_featurizer_is_constructible():
    defaults = {"columns": {"prefix": "x"}}
    for name in REGISTRY:
        assert make_featurizer(name, defaults.get(name)).name == name


def test_process_pool_gives_the_serial_result():
    comp = make_featurizer("composition")
    formulas = [("Fe2O3",), ("NaCl",), ("Xx",), ("Hg0.7Cd0.3Te",), ("SiO2",)]
    with process_pool(2) as pool:
        keys = [k for c in map_chunks(comp.canonical, formulas, 2, pool) for k in c]
        valid = [k for k in keys if isinstance(k, str)]
        X = np.vstack(map_chunks(comp.featurize, valid, 2, pool))
    assert keys == comp.canonical(formulas)
    np.testing.assert_array_equal(X, comp.featurize(valid))
    with process_pool(1) as serial:
        assert serial is None  # one worker: no processes, the work stays here
