"""`s2r init`: a commented config to start a study from, written into the user's own folder.

A copy of a shipped config (or of a template with placeholders) under the user's study name,
so an installed package needs no checkout to begin, and the copy is theirs to edit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from s2r_ray import shipped
from s2r_ray.config import PLACEHOLDER, ConfigError, UserError, placeholders

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # StudyConfig.name's pattern
NAME_LINE = re.compile(r"^name: .*$", re.M)


@dataclass(frozen=True)
class Starter:
    """What `s2r init` wrote and the lines that tell the user what to do next."""

    path: Path
    lines: list[str]


def sources() -> list[str]:
    """What `--from` accepts: every shipped config and every template."""
    return sorted({*shipped.names(), *shipped.template_names()})


def package_version() -> str:
    try:
        return version("s2r-ray")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown"


def origin(source: str) -> tuple[Path, str]:
    """The file `--from` names, and what it is."""
    if path := shipped.template(source):
        return path, "template"
    if path := shipped.find(source):
        return path, "shipped config"
    raise ConfigError(
        f"--from {source}: no shipped config or template so named ({', '.join(sources())})"
    )


def target_path(name: str | None, source: str) -> Path:
    """NAME as the file to write: `foo` is foo.yaml here, a name ending in .yaml/.yml is a
    path; the default is my_<source>.yaml (never a shipped name, which `s2r run` would take for
    the shipped config)."""
    if name is None:
        name = "my_study" if shipped.template(source) else f"my_{source}"
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(f"{name}.yaml")
    if not NAME.match(path.stem):
        raise ConfigError(f"{name}: a study name is letters, digits, '_', '.' and '-' only")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    return path


def write_starter(name: str | None, source: str) -> Starter:
    """Write the source's text renamed to the file's stem under a line saying where it came
    from; an existing file is never overwritten."""
    found, kind = origin(source)
    path = target_path(name, source)
    text, count = NAME_LINE.subn(f"name: {path.stem}", found.read_text("utf-8"), count=1)
    if count != 1:
        raise RuntimeError(f"{found} has no top-level 'name:' line")  # the package's own bug
    head = (
        f"# Written by `s2r init --from {source}` (s2r-ray {package_version()}), from the {kind}.\n"
    )
    try:
        with path.open("x", encoding="utf-8") as f:  # exclusive: refuses an existing file
            f.write(head + text)
    except FileExistsError:
        raise UserError(
            f"{path}: already exists; s2r init never overwrites: give another NAME"
        ) from None
    return Starter(path, next_lines(path, f"{kind} {source}", text))


def next_lines(path: Path, what: str, text: str) -> list[str]:
    """What was written, and the command to run next (after what is left to fill in)."""
    lines = [f"wrote {path} (from the {what})"]
    run = f"s2r run {path}" + (" --quick" if re.search(r"^quick:", text, re.M) else "")
    if left := placeholders(yaml.safe_load(text)):
        lines.append(f"next: replace {PLACEHOLDER} ...> in {', '.join(left)}; then {run}")
        return lines
    if "${S2R_DATA_DIR" in text:
        lines.append("its data paths use $S2R_DATA_DIR: set it to the folder that holds the data")
    return [*lines, f"next: {run}"]
