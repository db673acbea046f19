"""The `s2r` command: fitting a results table, and errors worded for the user."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2r_ray.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
RESULTS = "n,repetition,mae\n100,0,0.5\n300,0,0.4\n1000,0,0.3\n3000,0,0.25\n"


def one_error_line(capsys) -> str:
    """The single `s2r: error: ...` line a user mistake prints, and nothing else."""
    err = capsys.readouterr().err
    assert err.startswith("s2r: error: ") and err.count("\n") == 1, err
    return err


def test_fit_command_recovers_an_exact_law_and_writes_the_report(tmp_path, capsys):
    n = np.array([100, 300, 1000, 3000, 10000, 30000])
    table = pd.DataFrame(
        [{"n": k, "repetition": r, "mae": 2.0 * k**-0.5 + 0.1} for k in n for r in range(3)]
    )
    table.to_csv(tmp_path / "results.csv", index=False)
    code = main(
        [
            "fit",
            str(tmp_path / "results.csv"),
            "--out",
            str(tmp_path / "fit"),
            "--target-mae",
            "0.11",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    fit = report["fit"]
    assert fit["D"] == pytest.approx(2.0, rel=1e-6)
    assert fit["alpha"] == pytest.approx(0.5, rel=1e-6)
    assert fit["C"] == pytest.approx(0.1, rel=1e-6)
    assert report["n_for_target"]["n"] == pytest.approx((2.0 / 0.01) ** 2, rel=1e-4)
    for key in ("fit", "extrapolation", "n_for_target", "backtest", "diagnostics", "alternatives"):
        assert key in report
    assert (tmp_path / "fit" / "scaling.png").exists()
    assert (tmp_path / "fit" / "backtest.png").exists()
    out = capsys.readouterr().out
    assert "fit: E(n) = D·n^−α + C with D = 2, α = 0.5 [0.5, 0.5], C = 0.1" in out
    assert "Simulated rows needed for a target MAE of 0.11: n ≈ 40,000" in out


def test_fit_command_names_missing_columns(tmp_path, capsys):
    pd.DataFrame({"n": [1, 2], "err": [0.1, 0.2]}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["fit", str(tmp_path / "t.csv"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "t.csv" in err and "'mae'" in err and "'repetition'" in err


def test_run_with_a_bad_override_fails_before_any_work(tmp_path, capsys):
    code = main(["run", "configs/demo.yaml", "--out", str(tmp_path), "--set", "tune.trails=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "s2r: error: --set tune.trails=2: invalid study config" in err
    assert "tune.trails: unknown field" in err and "demo.yaml" not in err.splitlines()[0]
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.parametrize(
    ("content", "args", "words"),
    [
        ("", [], "results.csv: the file is empty"),
        (RESULTS, ["--n-boot", "0"], "n_boot = 0: need at least 10 bootstrap resamples"),
        (RESULTS + "-100,1,0.3\n", [], "results.csv: row 5: n = -100 is negative"),
        (RESULTS + "100,1,-0.3\n", [], "results.csv: row 5: mae = -0.3 is negative"),
        ("n,repetition,mae\n", [], "results.csv: no row with a finite n and mae (0 rows)"),
        ("n,repetition,mae\nnan,0,\n,1,nan\n", [], "no row with a finite n and mae (2 rows)"),
        ("n,repetition,mae\n100,0,caf\xe9\n", [], "results.csv: not UTF-8 text (byte 0xe9)"),
    ],
    ids=["empty", "n-boot-0", "negative-n", "negative-mae", "header-only", "all-nan", "latin-1"],
)
def test_fit_command_refuses_a_table_it_cannot_fit(tmp_path, capsys, content, args, words):
    (tmp_path / "results.csv").write_bytes(content.encode("latin-1"))
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "results.csv"), "--out", str(out), *args]) == 2
    assert words in one_error_line(capsys)
    assert not out.exists()


def tables_config(tmp_path: Path, source: str, **source_fields) -> Path:
    """A real-data study config over a source table with the given text and a small target."""
    (tmp_path / "s.csv").write_text(source)
    (tmp_path / "t.csv").write_text("formula,gap\nFe2O3,2.2\nNaCl,8.5\nSiO2,9.0\nGaAs,1.4\n")
    spec = {"id_columns": ["formula"], "value_column": "gap", "featurizer": "composition"}
    data = {
        "kind": "tables",
        "cache_dir": str(tmp_path / "cache"),
        "source": spec | {"path": str(tmp_path / "s.csv")} | source_fields,
        "target": spec | {"path": str(tmp_path / "t.csv")},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps({"name": "t", "sizes": [2], "data": data}))  # JSON is YAML
    return path


@pytest.mark.parametrize(
    ("source", "fields", "words"),
    [
        ("formula,band_gap\nFe2O3,2.0\n", {}, "s.csv: no column 'gap' (data.source value"),
        ("formula,gap\nFe2O3,2.0\n", {"query": "gap.foo()"}, "s.csv: data.source.query"),
        ("formula,gap\nFe0O3,2.0\nXx,1.0\n", {}, "s.csv: no source rows left"),
        ("formula,gap\nFe2O3,2.0\n", {"valid_range": [30, 0]}, "data.source.valid_range"),
    ],
    ids=["missing-column", "bad-query", "no-rows-left", "reversed-range"],
)
def test_run_stops_on_a_data_mistake_with_one_line_and_exit_2(
    tmp_path, capsys, source, fields, words
):
    config = tables_config(tmp_path, source, **fields)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2r: error: ") and words in err and "Traceback" not in err


def test_a_rejected_side_still_writes_its_rejected_rows(tmp_path, capsys):
    config = tables_config(tmp_path, "formula,gap\nFe0O3,2.0\nXx,1.0\n")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    assert f"rejected rows are listed in {out / 'rejected_rows.csv'}" in one_error_line(capsys)
    rejected = pd.read_csv(out / "rejected_rows.csv")
    assert rejected["reason"].tolist() == ["zero_or_negative_amount", "invalid_formula"]


def test_a_binary_config_is_one_line_naming_it(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_bytes(bytes(range(256)))
    assert main(["run", str(config)]) == 2
    assert f"{config}: not UTF-8 text" in one_error_line(capsys)


def test_shipped_config_without_its_data_says_to_set_s2r_data_dir(tmp_path):
    # a new user's first try: no S2R_DATA_DIR, no ../shared/data beside the working directory
    env = {k: v for k, v in os.environ.items() if k != "S2R_DATA_DIR"}
    config = REPO / "configs" / "bandgap_mp.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "s2r_ray.cli", "run", str(config), "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("s2r: error: ../shared/data/inorganic_bandgap/")
    assert "no such data file" in done.stderr and "S2R_DATA_DIR is not set" in done.stderr


def test_help_explains_the_study():
    text = build_parser().format_help()
    assert "E(n) = D n^-alpha + C" in text and "transfer gap" in text
