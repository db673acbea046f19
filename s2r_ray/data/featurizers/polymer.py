"""Polymer (or small-molecule) features from a SMILES: Morgan count fingerprint + RDKit descriptors.

Canonical key: RDKit's canonical SMILES of the repeat unit, connection points kept as `*`.

Connection points: the fingerprint sees each `*` as a dummy atom (atomic number 0), so the
environments at the chain ends are encoded the same way for every repeat unit. Descriptors are
computed on the repeat unit capped with hydrogens at the `*` positions, a real molecule: on the
dummy-atom form RDKit returns NaN for partial charges and BCUT descriptors of every polymer.
Non-finite descriptor values left (rare) are replaced by 0.0. Solvents (no `*`) are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import rdkit
from pydantic import Field
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from s2r_ray.config import ConfigError
from s2r_ray.data.featurizers.base import Featurizer, Options, Rejection

DESCRIPTOR_FILL = 0.0
_DESCRIPTORS: dict[str, Callable[[Chem.Mol], float]] = dict(Descriptors._descList)


class PolymerOptions(Options):
    radius: int = Field(2, ge=0)
    n_bits: int = Field(1024, ge=1)
    descriptors: Literal["all", "none"] | list[str] = "all"


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES, None if RDKit cannot parse it (its error log is silenced)."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def hydrogen_capped(mol: Chem.Mol) -> Chem.Mol:
    """The molecule with every dummy atom (`*`) turned into a hydrogen and removed."""
    capped = Chem.RWMol(mol)
    for atom in capped.GetAtoms():
        if atom.GetAtomicNum() == 0:
            atom.SetAtomicNum(1)
            atom.SetIsotope(0)
            atom.SetAtomMapNum(0)
            atom.SetIsAromatic(False)
    Chem.SanitizeMol(capped)
    return Chem.RemoveHs(capped)


class PolymerFeaturizer(Featurizer):
    """Morgan count fingerprint (radius, n_bits) of the repeat unit, then its RDKit descriptors."""

    name = "polymer"
    version = "1"
    options_model = PolymerOptions
    chunk_size = 500  # descriptors cost ~5 ms a molecule

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        chosen = self.options.descriptors
        if isinstance(chosen, list) and (unknown := sorted(set(chosen) - set(_DESCRIPTORS))):
            raise ConfigError(f"featurizer 'polymer': unknown RDKit descriptors {unknown}")
        # names only (in RDKit's order): some descriptor functions are lambdas, which the
        # process pool could not pickle
        self.descriptor_names = [
            n for n in _DESCRIPTORS if chosen == "all" or (chosen != "none" and n in chosen)
        ]

    @property
    def feature_names(self) -> list[str]:
        bits = [f"morgan_r{self.options.radius}_{i}" for i in range(self.options.n_bits)]
        return bits + [f"rdkit_{n}" for n in self.descriptor_names]

    def library_versions(self) -> str:
        return f"rdkit {rdkit.__version__}"

    def canonical(self, ids: Sequence[tuple[str, ...]]) -> list[str | Rejection]:
        return [canonical_smiles(s) or Rejection("invalid_smiles") for (s,) in ids]

    def featurize(self, keys: Sequence[str]) -> np.ndarray:
        generator = rdFingerprintGenerator.GetMorganGenerator(
            radius=self.options.radius, fpSize=self.options.n_bits
        )
        out = np.full((len(keys), len(self.feature_names)), np.nan, dtype=np.float32)
        with rdBase.BlockLogs():
            for r, key in enumerate(keys):
                mol = Chem.MolFromSmiles(key)
                try:
                    capped = hydrogen_capped(mol)
                except (ValueError, RuntimeError):  # RDKit's sanitisation errors: the row stays NaN
                    continue
                out[r, : self.options.n_bits] = generator.GetCountFingerprintAsNumPy(mol)
                out[r, self.options.n_bits :] = self._descriptor_values(capped)
        return out

    def _descriptor_values(self, mol: Chem.Mol) -> np.ndarray:
        values = np.empty(len(self.descriptor_names))
        for j, name in enumerate(self.descriptor_names):
            try:
                values[j] = _DESCRIPTORS[name](mol)
            except (ValueError, RuntimeError, ZeroDivisionError, OverflowError):
                values[j] = np.nan
        # float32-safe: Ipc reaches 1e14 and could overflow on larger units
        values[~np.isfinite(values) | (np.abs(values) > 1e30)] = DESCRIPTOR_FILL
        return values
