"""Polymer–solvent pair features: the polymer featurizer on each partner, side by side, plus the
conditions (a temperature becomes 1/T in K, the form Flory–Huggins χ ≈ A + B/T is linear in).

Canonical key: "<polymer canonical SMILES>|<solvent canonical SMILES>" ('|' never occurs in a
SMILES); the table layer appends the condition values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from s2r_ray.config import ConfigError
from s2r_ray.data.featurizers.base import Featurizer, Options, Rejection
from s2r_ray.data.featurizers.polymer import PolymerFeaturizer, PolymerOptions

SEPARATOR = "|"
KELVIN_OFFSET = {"C": 273.15, "K": 0.0}


class PairOptions(Options):
    polymer: PolymerOptions = Field(default_factory=PolymerOptions)
    temperature_column: str | None = None
    temperature_unit: Literal["C", "K"] = "K"


class PairFeaturizer(Featurizer):
    """[polymer features | solvent features | conditions], each partner featurized once."""

    name = "pair"
    version = "1"
    options_model = PairOptions
    n_ids = 2
    chunk_size = 500

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.partner = PolymerFeaturizer(self.options.polymer.model_dump())

    @property
    def feature_names(self) -> list[str]:
        names = self.partner.feature_names
        return [f"polymer_{n}" for n in names] + [f"solvent_{n}" for n in names]

    def library_versions(self) -> str:
        return self.partner.library_versions()

    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        polymers = self.partner.canonical([(p,) for p, _ in ids])
        solvents = self.partner.canonical([(s,) for _, s in ids])
        out: list[str | Rejection] = []
        for p, s in zip(polymers, solvents, strict=True):
            if isinstance(p, Rejection):
                out.append(p)
            elif isinstance(s, Rejection):
                out.append(Rejection(s.reason, part=1))
            else:
                out.append(f"{p}{SEPARATOR}{s}")
        return out

    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        polymers, solvents = zip(*(k.split(SEPARATOR) for k in keys), strict=True)
        partners = sorted(set(polymers) | set(solvents))
        row = {p: i for i, p in enumerate(partners)}
        X = self.partner.featurize(partners)
        return np.hstack([X[[row[p] for p in polymers]], X[[row[s] for s in solvents]]])

    def row_features(
        self, table: pd.DataFrame, condition_columns: list[str]
    ) -> tuple[np.ndarray, list[str]]:
        """The conditions as read, except the temperature column, which becomes 1/T in K."""
        column = self.options.temperature_column
        if column is not None and column not in condition_columns:
            raise ConfigError(
                f"featurizer 'pair': temperature_column {column!r} is not among the condition "
                f"columns {condition_columns}"
            )
        X, names = super().row_features(table, condition_columns)
        if column is not None:
            j = condition_columns.index(column)
            X[:, j] = 1.0 / (X[:, j] + KELVIN_OFFSET[self.options.temperature_unit])
            names[j] = "inverse_temperature_K"
        return X, names
