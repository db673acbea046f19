"""Model families behind one seam (`base.Family`): `model.kind` in the config picks one.

A new family is one module defining a `Family` and one line here (or `register` from user code,
e.g. a test). Modules are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from s2r_ray.models.base import Family
    from s2r_ray.models.hyperparameters import PretrainConfig

FAMILIES: dict[str, str | type[Family]] = {
    "mlp": "s2r_ray.models.mlp:MLPFamily",
    "attention": "s2r_ray.models.attention:AttentionFamily",
}


def register(kind: str, family: type[Family]) -> None:
    FAMILIES[kind] = family


def family_class(kind: str) -> type[Family]:
    if kind not in FAMILIES:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(FAMILIES))}")
    entry = FAMILIES[kind]
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = FAMILIES[kind] = getattr(import_module(module), name)
    return entry


class ModelChoice(Protocol):
    """A config's `model` section: the family's kind and its options."""

    @property
    def kind(self) -> str: ...

    def options(self) -> dict[str, Any]: ...


class FamilyConfig(Protocol):
    """What a family is made from: a study config's `model` and `pretrain` sections (the config
    imports this package, never the reverse)."""

    @property
    def model(self) -> ModelChoice: ...

    @property
    def pretrain(self) -> PretrainConfig: ...


def make_family(cfg: FamilyConfig) -> Family:
    """The configured family, its options validated by its own schema."""
    cls = family_class(cfg.model.kind)
    return cls(cls.Options.model_validate(cfg.model.options()), cfg.pretrain)
