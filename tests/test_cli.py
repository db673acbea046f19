"""The `s2r` command: fitting a results table, and errors worded for the user."""

import json

import numpy as np
import pandas as pd
import pytest

from s2r_ray.cli import build_parser, main


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
    assert "fit E(n) = 2 n^-0.5 + 0.1" in capsys.readouterr().out


def test_fit_command_names_missing_columns(tmp_path, capsys):
    pd.DataFrame({"n": [1, 2], "err": [0.1, 0.2]}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["fit", str(tmp_path / "t.csv"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "t.csv" in err and "'mae'" in err and "'repetition'" in err


def test_run_with_a_bad_override_fails_before_any_work(tmp_path, capsys):
    code = main(["run", "configs/demo.yaml", "--out", str(tmp_path), "--set", "tune.trails=2"])
    assert code == 2
    assert "tune.trails: unknown field" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_help_explains_the_study():
    text = build_parser().format_help()
    assert "E(n) = D n^-alpha + C" in text and "transfer gap" in text
