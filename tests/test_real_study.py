"""The band-gap study (MP PBE -> experiment) end to end at a tiny scale, on the real data."""

import json

import pytest

from s2r_ray.config import load_config
from s2r_ray.folder import StudyFolder
from s2r_ray.study.driver import run_study

pytestmark = [pytest.mark.ray, pytest.mark.data]

TINY = [
    "sizes=[300,3000,20000]",
    "target_sizes=null",
    "repetitions=2",
    "model.hidden=[64,32]",
    "pretrain.max_steps=1500",
    "finetune.epochs=[6,12]",
    "tune.trials_per_cell=2",
    "tune.grace_period=3",
    "report.n_boot=200",
]


def _law(fit: dict, n: float) -> float:
    """E(n) = D n^-alpha + C as the report states it (alpha None: a flat fit, D = 0)."""
    return fit["C"] + (0.0 if fit["alpha"] is None else fit["D"] * n ** -fit["alpha"])


def _check_the_fit(report: dict) -> None:
    """The fit against what three sizes of band-gap MAEs (0.2-0.8 eV) can justify."""
    fit, sizes = report["fit"], report["sizes"]
    maes = {s["n"]: s["test_mae_mean"] for s in sizes}
    print(f"fit: {fit}; extrapolation: {report['extrapolation']}; MAE by n: {maes}")
    assert fit["sizes_used"] == [300, 3000, 20000] and fit["m"] is None, fit
    # D, C >= 0 and a least-squares floor: above every mean, lowering C would fit all better
    assert fit["D"] >= 0 and 0 <= fit["C"] <= max(maes.values()), fit
    assert fit["alpha"] is None or 0 < fit["alpha"] <= 3, fit
    for name in ("D", "alpha", "C"):
        lo, hi = fit[f"{name}_ci90"]
        assert lo <= hi, (name, fit)
        if fit[name] is not None:
            assert lo - 1e-9 <= fit[name] <= hi + 1e-9, (name, fit)
    # the curve follows the means it was fitted to (3 parameters, 3 sizes: it passes through
    # them unless noise makes the means rise with n, and then it misses by about that rise)
    for n, mae in maes.items():
        assert abs(_law(fit, n) - mae) <= 0.05, (n, mae, _law(fit, n), fit)
    assert [e["factor"] for e in report["extrapolation"]] == [10, 100]
    previous = _law(fit, 20000)
    for e in report["extrapolation"]:
        assert e["n"] == pytest.approx(20000 * e["factor"])
        assert e["mae"] == pytest.approx(_law(fit, e["n"]), rel=1e-6), e  # the stated law
        # no lower than the fitted floor, no higher than the curve at fewer rows
        assert fit["C"] - 1e-9 <= e["mae"] <= previous + 1e-9, (e, fit)
        assert 0.15 < e["mae"] < 0.8, e  # a band-gap MAE, not an artefact of the fit
        lo, hi = e["mae_ci90"]
        assert lo - 1e-9 <= e["mae"] <= hi + 1e-9 and lo >= 0, e
        previous = e["mae"]
    # 10x more simulated rows is no worse than no pretraining at all, within its interval
    ten_x, baseline = report["extrapolation"][0], report["baseline"]
    assert ten_x["mae"] <= baseline["test_mae_ci90"][1], (ten_x, baseline)


def test_tiny_bandgap_study_runs_on_the_real_pair(ray_session, data_dir, tmp_path):
    cfg = load_config(
        "configs/bandgap_mp.yaml",
        [*TINY, f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", f"data.cache_dir={tmp_path}"],
    )
    report = run_study(cfg, tmp_path / "out", echo=lambda line: None)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["units"] == "eV"
    assert on_disk["counts"]["source_rows"] == 78_164 and on_disk["counts"]["target_rows"] == 4_601
    maes = [s["test_mae_mean"] for s in report["sizes"]]
    # far better than predicting the train mean (1.15 eV, science.md) at every size
    assert all(0.2 < m < 0.8 for m in [*maes, report["baseline"]["test_mae_mean"]])
    refs = report["references"]
    assert refs["matbench_v0.1_record_MODNet"] == 0.3327
    assert 0.3 < refs["simulation_alone"] < 0.45  # MP PBE gap used directly, same test rows
    _check_the_fit(report)
    records = StudyFolder(tmp_path / "out").ledger()
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert all(r["reference_rows"] > 0 for r in records)
    assert all(r["source_val_mae"] > 0 for r in records if r["n"])


def test_the_attention_family_runs_the_real_pair(ray_session, data_dir, tmp_path):
    """model.kind: attention through the same study code: element tokens from the `elements`
    featurizer, pretrained on MP, fine-tuned and scored on experiment."""
    cfg = load_config(
        "configs/bandgap_mp_attention.yaml",
        [
            "sizes=[3000]",
            "repetitions=1",
            "model.d_model=32",
            "model.n_layers=1",
            "pretrain.max_steps=600",
            "finetune.epochs=[4,6]",
            "finetune.ensemble=1",
            "tune.trials_per_cell=1",
            "report.n_boot=100",
            f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
            f"data.cache_dir={tmp_path}",
        ],
    )
    run_study(cfg, tmp_path / "out", echo=lambda line: None)
    records = {r["n"]: r for r in StudyFolder(tmp_path / "out").ledger()}
    assert sorted(records) == [0, 3000] and all(r["status"] == "ok" for r in records.values())
    assert all(0.2 < r["mae"] < 1.0 for r in records.values())
    assert records[3000]["pretrain_steps"] > 0 and records[3000]["zero_shot_mae"] > 0
