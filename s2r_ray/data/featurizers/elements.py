"""Element tokens: a composition as up to K (atomic number, atomic fraction) pairs.

The input of the composition-attention family (`s2r_ray.models.attention`), which embeds each
element from its properties and attends over the set. A row is K atomic numbers (0 = padding)
then K fractions (summing to 1, 0 on padding), largest fraction first, ties by atomic number,
so a key always gives the same row. Keys are the `composition` featurizer's, so both families
see the same rows of a table.

Rejected, with a reason, instead of truncated or guessed: a composition of more than K elements
(`too_many_elements`), and one with an element pymatgen knows too little about to embed
(`element_without_properties`: Z >= 104, which lack most properties; noble gases and the
actinides up to Lr miss at most 4 of 17 and are kept, their gaps filled with property means).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd
from pydantic import Field

from s2r_ray.config import ConfigError
from s2r_ray.data.featurizers.base import Options, Rejection
from s2r_ray.data.featurizers.composition import (
    CompositionFeaturizer,
    element_table,
    parse_key,
    raw_element_table,
)

MAX_MISSING_PROPERTIES = 0.25  # share of properties an element may lack and still be embedded


@cache
def atomic_numbers() -> dict[str, int]:
    """symbol -> Z for every element pymatgen knows."""
    symbols, names, raw = raw_element_table()
    return {s: int(z) for s, z in zip(symbols, raw[:, names.index("Z")], strict=True)}


@cache
def usable_elements() -> frozenset[str]:
    """Symbols whose properties are mostly measured, not filled: the ones worth embedding."""
    symbols, _, raw = raw_element_table()
    missing = np.isnan(raw).mean(axis=1)
    return frozenset(
        s for s, m in zip(symbols, missing, strict=True) if m <= MAX_MISSING_PROPERTIES
    )


@cache
def embedding_table() -> np.ndarray:
    """float32 (max Z + 1, properties): row Z holds element Z's properties standardised over
    the usable elements (fills included), row 0 (padding) zeros. Built once per process."""
    symbols, _, _, table = element_table()
    usable = [i for i, s in enumerate(symbols) if s in usable_elements()]
    center, scale = table[usable].mean(axis=0), table[usable].std(axis=0)
    z = np.array([atomic_numbers()[s] for s in symbols])
    out = np.zeros((z.max() + 1, table.shape[1]), dtype=np.float32)
    out[z] = (table - center) / np.where(scale > 0, scale, 1.0)
    return out


class ElementsOptions(Options):
    max_elements: int = Field(8, ge=1, le=32, description="K: element slots per composition")


class ElementsFeaturizer(CompositionFeaturizer):
    """K atomic numbers then K atomic fractions per composition key (see the module docstring)."""

    name = "elements"
    version = f"1+composition {CompositionFeaturizer.version}"  # its keys are ours
    options_model = ElementsOptions
    keep_constant = True  # padding slots are constant on most data yet part of the layout

    @property
    def feature_names(self) -> list[str]:
        k = range(self.options.max_elements)
        return [f"Z_{i}" for i in k] + [f"fraction_{i}" for i in k]

    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        return [k if isinstance(k, Rejection) else self._check(k) for k in super().canonical(ids)]

    def _check(self, key: str) -> str | Rejection:
        """The key, or why it cannot be tokenised."""
        symbols = parse_key(key)
        if len(symbols) > self.options.max_elements:
            return Rejection("too_many_elements")
        if not usable_elements().issuperset(symbols):
            return Rejection("element_without_properties")
        return key

    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        k = self.options.max_elements
        z_of = atomic_numbers()
        out = np.zeros((len(keys), 2 * k), dtype=np.float32)
        for r, key in enumerate(keys):
            tokens = sorted(((-f, z_of[s]) for s, f in parse_key(key).items()))
            for slot, (neg_fraction, z) in enumerate(tokens):
                out[r, slot], out[r, k + slot] = z, -neg_fraction
        return out

    def row_features(
        self, table: pd.DataFrame, condition_columns: list[str]
    ) -> tuple[np.ndarray, list[str]]:
        """None: extra columns after the 2K would be read as element slots by position."""
        if condition_columns:
            raise ConfigError(
                f"featurizer {self.name!r} takes no condition_columns (got {condition_columns})"
            )
        return np.empty((len(table), 0)), []
