"""The package as a user installs it: the wheel built from this checkout, and a fresh virtual
environment outside the checkout that holds it, for the tests that use s2r-ray without the
repository (tests/test_package.py, tests/test_submit.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what pyproject.toml builds from; copied, so that the build's own folders stay out of the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "s2r_ray", "configs")


def build_wheel(dest: Path) -> Path:
    """`pip wheel` of a copy of the checkout, offline (no build isolation, no dependencies)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    subprocess.run([*cmd, "-q", "-w", str(dest)], check=True, capture_output=True, timeout=300)
    (wheel,) = dest.glob("s2r_ray-*.whl")
    return wheel


def venv_with(wheel: Path, where: Path) -> Path:
    """A new virtual environment at `where` with the wheel installed, which borrows the test
    environment's third-party packages (torch, ray, ...) through a plain path in a .pth file: a
    path, not a site dir, so that environment's own .pth files (its editable s2r_ray finder
    among them) are never run, and s2r_ray can only come from the wheel. Returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "borrowed_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    install += ["--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return where / "bin"


def outside_env(bin_dir: Path) -> dict[str, str]:
    """This process's environment (telemetry off, the suite's Ray token) without what points at
    the checkout or the test's own environment, with the new environment's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
