"""Composition features: statistics of elemental properties over a formula, plus element fractions.

Canonical key: the composition normalised to atomic fractions rounded to 4 decimals (the
precision of the shared data's `comp_key`), written as the smallest integer formula those
fractions allow (multiplier up to 100), elements in alphabetical order: `Hg0.7Cd0.3Te`,
`Cd3Hg7Te10` and `Hg0.35Cd0.15Te0.5` all become `Cd3Hg7Te10`, `Fe4O6` becomes `Fe2O3`. Fractions
with no such multiplier stay fractional (`Fe0.3335Li0.1665O0.5`). An element below 0.00005 atomic
fraction rounds away, as in `comp_key`; one written with a zero or negative amount (`Fe0O3`,
`Fe-1O3`) is a rejected row (`zero_or_negative_amount`), where pymatgen would drop it silently.

Element property table: built once per process from pymatgen. A property pymatgen lacks for an
element (e.g. the electronegativity of noble gases, most properties of Z > 103) is filled with
the property's mean over the elements that have it, so no NaN reaches a model.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from functools import cache
from math import isfinite

import numpy as np
import pymatgen.core
from pymatgen.core import Composition, Element

from s2r_ray.data.featurizers.base import Featurizer, Options, Rejection

# (feature name, pymatgen Element attribute); valence_* are counted from the electronic structure
ELEMENT_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("Z", "Z"),
    ("atomic_mass", "atomic_mass"),
    ("row", "row"),
    ("group", "group"),
    ("electronegativity", "X"),
    ("atomic_radius", "atomic_radius"),
    ("ionization_energy", "ionization_energy"),
    ("electron_affinity", "electron_affinity"),
    ("melting_point", "melting_point"),
    ("boiling_point", "boiling_point"),
    ("molar_volume", "molar_volume"),
    ("mendeleev_no", "mendeleev_no"),
    ("van_der_waals_radius", "van_der_waals_radius"),
)
ORBITALS = "spdf"
STATS = ("mean", "min", "max", "range", "mad")
_KEY_TOKEN = re.compile(r"([A-Z][a-z]?)([0-9.]*)")
_WRITTEN_AMOUNT = re.compile(r"(?<=[A-Za-z)\]])-?[0-9.]+")  # the number after a symbol or group
_DECIMALS = 4
_MAX_MULTIPLIER = 100


@cache
def raw_element_table() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(symbols, property names, (elements x properties) float64) as pymatgen has them: NaN
    where it has none, so a consumer can tell measured values from fills."""
    elements = list(Element)
    names = [n for n, _ in ELEMENT_PROPERTIES]
    names += [f"valence_{o}" for o in ORBITALS] + ["valence_total"]
    table = np.full((len(elements), len(names)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every property it has no data for
        for i, el in enumerate(elements):
            for j, (_, attr) in enumerate(ELEMENT_PROPERTIES):
                table[i, j] = _number(el, attr)
            table[i, len(ELEMENT_PROPERTIES) :] = _valence(el)
    return tuple(el.symbol for el in elements), tuple(names), table


@cache
def element_table() -> tuple[tuple[str, ...], dict[str, int], tuple[str, ...], np.ndarray]:
    """(symbols, symbol -> row, property names, (elements x properties) float64), fills applied."""
    symbols, names, raw = raw_element_table()
    table = np.where(np.isnan(raw), np.nanmean(raw, axis=0), raw)
    return symbols, {s: i for i, s in enumerate(symbols)}, names, table


def _number(el: Element, attr: str) -> float:
    """A pymatgen property as a float, NaN where pymatgen has none or cannot say."""
    try:
        v = getattr(el, attr)
        return float(v) if v is not None and isfinite(float(v)) else np.nan
    except (AttributeError, KeyError, TypeError, ValueError):
        return np.nan


def _valence(el: Element) -> list[float]:
    """Electrons outside the noble-gas core by orbital type s/p/d/f, and their total (Magpie-style:
    filled d and f shells outside the core count, e.g. Pb has 2/2/10/14)."""
    try:
        structure = el.electronic_structure  # e.g. "[Xe].4f14.5d10.6s2.6p2"
    except (AttributeError, KeyError):
        return [np.nan] * (len(ORBITALS) + 1)
    counts = dict.fromkeys(ORBITALS, 0.0)
    for shell in structure.split("."):
        m = re.fullmatch(r"\d+([spdf])(\d+)", shell)
        if m:
            counts[m.group(1)] += float(m.group(2))
    return [*counts.values(), sum(counts.values())]


def _format_key(fractions: dict[str, float]) -> str:
    """The normalised reduced formula for atomic fractions (see the module docstring)."""
    rounded = {s: round(f, _DECIMALS) for s, f in sorted(fractions.items())}
    rounded = {s: f for s, f in rounded.items() if f > 0}
    tolerance = 0.5 * 10.0**-_DECIMALS
    for m in range(1, _MAX_MULTIPLIER + 1):
        scaled = {s: f * m for s, f in rounded.items()}
        if all(abs(v - round(v)) <= m * tolerance + 1e-9 for v in scaled.values()):
            return "".join(s + (str(round(v)) if round(v) != 1 else "") for s, v in scaled.items())
    return "".join(f"{s}{f:.{_DECIMALS}f}".rstrip("0") for s, f in rounded.items())


def parse_key(key: str) -> dict[str, float]:
    """Atomic fractions of a canonical key (keys are written by `_format_key`, so a regex does)."""
    amounts = {s: float(n) if n else 1.0 for s, n in _KEY_TOKEN.findall(key)}
    total = sum(amounts.values())
    return {s: a / total for s, a in amounts.items()}


def _has_non_positive_amount(formula: str) -> bool:
    """Whether an element or group is written with an amount <= 0: pymatgen drops a zero
    ("Fe0O3" is O3 to it), and a typo must not become another compound."""
    for text in _WRITTEN_AMOUNT.findall(formula):
        try:
            if float(text) <= 0:
                return True
        except ValueError:  # "1.2.3": malformed, pymatgen rejects it
            continue
    return False


class CompositionOptions(Options):
    element_fractions: bool = True


class CompositionFeaturizer(Featurizer):
    """Fraction-weighted mean, min, max, range and mean absolute deviation of each element
    property, then (option) the atomic fraction of every element pymatgen knows."""

    name = "composition"
    version = "2"
    options_model = CompositionOptions

    @property
    def feature_names(self) -> list[str]:
        symbols, _, props, _ = element_table()
        names = [f"{stat}_{p}" for stat in STATS for p in props]
        if self.options.element_fractions:
            names += [f"frac_{s}" for s in symbols]
        return names

    def library_versions(self) -> str:
        return f"pymatgen {pymatgen.core.__version__}"

    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        return [self._canonical_formula(formula) for (formula,) in ids]

    @staticmethod
    def _canonical_formula(formula: str) -> str | Rejection:
        if _has_non_positive_amount(formula):
            return Rejection("zero_or_negative_amount")
        try:
            comp = Composition(formula)
        except (ValueError, KeyError, TypeError, IndexError):
            return Rejection("invalid_formula")
        total = comp.num_atoms
        if total <= 0 or not all(isinstance(el, Element) for el in comp):
            return Rejection("invalid_formula")  # no atoms ("") or a dummy species ("Xx")
        key = _format_key({el.symbol: amount / total for el, amount in comp.items()})
        return key or Rejection("invalid_formula")

    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        symbols, index, _, table = element_table()
        rows, slots, elements, amounts = [], [], [], []
        for r, key in enumerate(keys):
            for slot, (symbol, fraction) in enumerate(parse_key(key).items()):
                rows.append(r)
                slots.append(slot)
                elements.append(index[symbol])
                amounts.append(fraction)
        idx = np.zeros((len(keys), max(slots, default=0) + 1), dtype=np.intp)
        frac = np.zeros(idx.shape)
        idx[rows, slots] = elements
        frac[rows, slots] = amounts
        values = table[idx]  # (keys, width, properties); padding has weight 0 and is masked
        weight = frac[:, :, None]
        present = weight > 0
        mean = (weight * values).sum(axis=1)
        low = np.where(present, values, np.inf).min(axis=1)
        high = np.where(present, values, -np.inf).max(axis=1)
        mad = (weight * np.abs(values - mean[:, None, :])).sum(axis=1)
        blocks = [mean, low, high, high - low, mad]
        if self.options.element_fractions:
            fractions = np.zeros((len(keys), len(symbols)))
            fractions[rows, elements] = amounts
            blocks.append(fractions)
        return np.hstack(blocks).astype(np.float32)
