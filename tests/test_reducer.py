"""The reducer's report path, without an actor: cell records in, fitted law out."""

import pytest

from s2r_ray.config import build_config
from s2r_ray.render.text import cell_line, fit_line, size_line
from s2r_ray.report import report_from_records

CFG = build_config(
    {
        "name": "exact",
        "sizes": [100, 300, 1000, 3000, 10000],
        "repetitions": 3,
        "target_mae": 0.2,
        "report": {"n_boot": 200},
    }
)


def _records(law, sizes, reps=3, failed=()):
    out = [
        {
            "cell": f"n{n}-mall-r{r}",
            "n": n,
            "m": None,
            "repetition": r,
            "status": "ok",
            "mae": law(n),
            "rmse": law(n) * 1.2,
            "trials": 4,
        }
        for n in [0, *sizes]
        for r in range(reps)
    ]
    for n, r in failed:
        out.append(
            {
                "cell": f"n{n}-mall-r{r}",
                "n": n,
                "m": None,
                "repetition": r,
                "status": "failed",
                "error": "all 4 trials failed",
            }
        )
    return out


def test_fit_on_exact_power_law_points_recovers_the_law():
    def law(n):
        return 0.5 if n == 0 else 3.0 * n**-0.4 + 0.15

    report = report_from_records(CFG, _records(law, CFG.sizes), "complete", {})
    fit = report["fit"]
    assert fit["D"] == pytest.approx(3.0, rel=1e-6)
    assert fit["alpha"] == pytest.approx(0.4, rel=1e-6)
    assert fit["C"] == pytest.approx(0.15, rel=1e-6)
    assert report["n_for_target"]["n"] == pytest.approx((3.0 / 0.05) ** (1 / 0.4), rel=1e-4)
    assert [e["n"] for e in report["extrapolation"]] == [1e5, 1e6]
    assert "α = 0.4 [0.4, 0.4], C = 0.15 [0.15, 0.15]" in fit_line(report)


def test_failed_cells_are_left_out_and_said():
    def law(n):
        return 0.5 if n == 0 else 3.0 * n**-0.4 + 0.15

    records = [r for r in _records(law, CFG.sizes) if not (r["n"] == 3000 and r["repetition"] == 2)]
    records += _records(law, [], failed=[(3000, 2)])[-1:]
    report = report_from_records(CFG, records, "running", {})
    size = next(s for s in report["sizes"] if s["n"] == 3000)
    assert size["repetitions"] == 2
    assert "missing_repetitions" in {d["code"] for d in report["diagnostics"]}


def test_before_three_sizes_the_fit_waits():
    report = report_from_records(CFG, _records(lambda n: 0.3, [100, 300]), "running", {})
    assert fit_line(report).startswith("fit: none yet: 2 size(s) with finished repetitions;")


def _cell(n, m, r, mae=None):
    record = {"cell": f"n{n}-m{m}-r{r}", "n": n, "m": m, "repetition": r}
    return record | ({"status": "ok", "mae": mae} if mae is not None else {"status": "failed"})


def test_the_live_log_compares_a_cell_only_with_cells_of_the_same_m():
    # a larger m alone lowers the error: m=300's 0.21 is no yardstick for a cell at m=50
    records = [_cell(0, 50, 0, 0.54), _cell(3000, 300, 0, 0.21), _cell(300, 50, 0, 0.40)]
    worse = _cell(1000, 50, 0, 0.45)
    assert cell_line(worse, [*records, worse], 4, 9) == (
        "[4/9 cells] n=1000 m=50 r0: test MAE 0.45 (best so far at m=50: 0.4, n=300 r0)"
    )
    better = _cell(1000, 50, 1, 0.38)
    line = cell_line(better, [*records, worse, better], 5, 9)
    assert line == "[5/9 cells] n=1000 m=50 r1: test MAE 0.38 (best so far at m=50)"
    failed = _cell(1000, 300, 1) | {"error": "all 4 trials failed"}
    line = cell_line(failed, [*records, failed], 6, 9)
    assert line == "[6/9 cells] n=1000 m=300 r1: FAILED (all 4 trials failed)"
    # a study without an m axis compares every cell
    plain = [_cell(0, None, 0, 0.5), _cell(300, None, 0, 0.3), _cell(100, None, 0, 0.4)]
    assert cell_line(plain[-1], plain, 3, 9).endswith("(best so far: 0.3, n=300 r0)")
    assert size_line({"test_mae_mean": 0.21994, "test_mae_ci90": [0.21288, 0.22691]}) == (
        "MAE 0.2199 [0.2129, 0.2269]"
    )


@pytest.mark.parametrize("late_cell", [False, True])
def test_the_final_report_redraws_the_plots_only_for_cells_that_arrived_since(
    ray_session, tmp_path, monkeypatch, late_cell
):
    """The last cell's refresh draws the plots; the final report (its status and timing new)
    keeps them, unless a cell arrived after that draw (an interrupted study's last cells)."""
    import ray

    from s2r_ray.folder import StudyFolder
    from s2r_ray.study import tracking
    from s2r_ray.study.reducer import Reducer

    monkeypatch.chdir(tmp_path)
    records = _records(lambda n: 0.5 if n == 0 else 3.0 * n**-0.4 + 0.15, CFG.sizes)
    planned = {n: 3 for n in [0, *CFG.sizes]}
    if late_cell:  # a 4th repetition of the largest size arrives, a 5th never does (a stop)
        planned[10000] = 5
        records.append({**records[-1], "cell": "n10000-mall-r3", "repetition": 3})
    folder = StudyFolder(tmp_path / "out")
    folder.claim()
    folder.write_config(CFG)
    uri = f"sqlite:///{tmp_path}/m.db"
    ctx = tracking.start_study(uri, "t", CFG.name, CFG.model_dump(mode="json"), CFG.sizes, {})
    reducer = Reducer.remote(CFG, str(tmp_path / "out"), ctx, planned, {"counts": {}})
    for record in records:
        ray.get(reducer.add_cell.remote(record))
    plots = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in plots] == ["backtest.png", "scaling.png"]
    drawn = {p: p.stat().st_mtime_ns for p in plots}
    report = ray.get(reducer.finish.remote("complete", {"timing": {"wall_seconds": 1.0}}))
    assert report["status"] == "complete" and report["timing"] == {"wall_seconds": 1.0}
    redrawn = [p.name for p in plots if p.stat().st_mtime_ns != drawn[p]]
    assert redrawn == (["backtest.png", "scaling.png"] if late_cell else [])
    assert '"status": "complete"' in (tmp_path / "out" / "report.json").read_text()
    ray.kill(reducer)
