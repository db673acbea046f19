"""Featurizer registry: a new featurizer is one module defining a `Featurizer` and one line here.

Modules are imported on first use, so importing `s2r_ray.data` (as every training process does
for `Dataset`) does not pay for pymatgen and RDKit.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from s2r_ray.config import ConfigError
from s2r_ray.data.featurizers.base import Featurizer, Rejection, map_chunks, process_pool

REGISTRY: dict[str, str] = {
    "columns": "s2r_ray.data.featurizers.columns:ColumnsFeaturizer",
    "composition": "s2r_ray.data.featurizers.composition:CompositionFeaturizer",
    "elements": "s2r_ray.data.featurizers.elements:ElementsFeaturizer",
    "pair": "s2r_ray.data.featurizers.pair:PairFeaturizer",
    "polymer": "s2r_ray.data.featurizers.polymer:PolymerFeaturizer",
}


def make_featurizer(name: str, options: dict[str, Any] | None = None) -> Featurizer:
    """The featurizer registered under `name`, its options validated."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown featurizer {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    featurizer: type[Featurizer] = getattr(import_module(module), cls)
    return featurizer(options)


__all__ = [
    "REGISTRY",
    "Featurizer",
    "Rejection",
    "make_featurizer",
    "map_chunks",
    "process_pool",
]
