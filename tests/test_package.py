"""s2r-ray installed from its wheel, used from a folder that is no checkout: the shipped configs
travel inside the package, `s2r init` starts a study, `s2r run demo` runs one (tiny here, its
own local Ray) and `s2r report` rebuilds its report."""

from __future__ import annotations

import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from installed import REPO, build_wheel, outside_env, venv_with

pytestmark = pytest.mark.ray  # `s2r run` starts a local Ray

# the demo at the size of tests/micro_study.yaml: seconds of training
TINY = [
    "sizes=[40,150]",
    "repetitions=1",
    "target_sizes=null",
    "data.synthetic={n_source: 400, n_target: 100, n_features: 6}",
    "model.hidden=[16]",
    "pretrain.patience=2",
    "pretrain.max_steps=300",
    "finetune.epochs=[2,3]",
    "tune={trials_per_cell: 1, startup_trials: 1, grace_period: 2}",
    "report.n_boot=50",
]


def test_the_wheel_holds_every_package_and_shipped_config(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    packages = {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("s2r_ray/**/__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    configs = {f"s2r_ray/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert configs and configs <= names
    assert "s2r_ray/templates/tables.yaml" in names
    assert not any(n.startswith(("configs/", "tests/")) for n in names)


def test_installed_package_runs_without_the_repository(tmp_path):
    started = time.monotonic()
    bin_dir = venv_with(build_wheel(tmp_path / "dist"), tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    env = outside_env(bin_dir)

    def s2r(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(bin_dir / "s2r"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done

    where = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "import s2r_ray, s2r_ray.shipped as s; print(s2r_ray.__file__); print(s.configs_dir())",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    site = tmp_path / "venv" / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's, not REPO's

    init = s2r("init")
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines() == [
        "wrote my_demo.yaml (from the shipped config demo)",
        "next: s2r run my_demo.yaml --quick",
    ]
    assert "name: my_demo" in (work / "my_demo.yaml").read_text()
    again = s2r("init")
    assert again.returncode == 2 and "already exists" in again.stderr

    run = s2r(
        "run", "demo", "--out", "runs/demo", *(w for s in TINY for w in ("--set", s)), timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"shipped config demo: {where[1]}/demo.yaml" in run.stdout
    assert "study demo (complete): test MAE" in run.stdout
    report = s2r("report", "runs/demo")
    assert report.returncode == 0, report.stderr
    assert "study demo (complete)" in report.stdout
    assert (work / "runs" / "demo" / "report.html").is_file()
    assert (work / "mlruns.db").is_file()  # MLflow's default store, in the user's folder
    print(f"\nwheel, venv, init, tiny demo and report: {time.monotonic() - started:.0f} s")
