"""The study configs that come with s2r-ray, by name: `s2r run demo` works without a checkout.

They live in one folder, `configs/` at the repository root; the wheel carries it as
`s2r_ray/configs/` (pyproject.toml maps it there). Every `*.yaml` in it is a shipped config, so a
new one needs no line of code.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """`s2r_ray/configs/` in an installed wheel, else `configs/` beside the package (a checkout,
    editable or on PYTHONPATH)."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def names() -> list[str]:
    """Every shipped config's name (its file name without `.yaml`), sorted."""
    folder = configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def find(name: str) -> Path | None:
    """The shipped config called `name` (`demo` or `demo.yaml`); None when there is none."""
    stem = name.removesuffix(".yaml")
    return configs_dir() / f"{stem}.yaml" if stem in names() else None


def template(name: str) -> Path | None:
    """A template `s2r init --from` writes that is no runnable config (its placeholders are to be
    filled in first); None when there is none."""
    path = _PACKAGE / "templates" / f"{name}.yaml"
    return path if path.is_file() else None


def template_names() -> list[str]:
    return sorted(p.stem for p in (_PACKAGE / "templates").glob("*.yaml"))
