"""Each shipped study config loads, joins and featurizes its shared data, and its size grid fits.

Needs ../shared/data (the `data_dir` fixture skips without it). The OQMD config (341k rows) is
loaded in full: ~13 s cold on 2 cores, ~4 s from the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s2r_ray.config import StudyConfig, load_config
from s2r_ray.data import Dataset, load_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# name: (source keys, target keys, target keys with a source value), measured on the shared data
EXPECTED = {
    "bandgap_mp": (78_164, 4_601, 3_372),
    "bandgap_mp_attention": (78_164, 4_601, 3_372),
    "bandgap_oqmd": (341_608, 4_601, 2_660),
    "chi_cosmo": (1_206, 1_190, 1_178),
    "tg_afzal": (314, 314, 314),
    "hardness": (9_291, 670, 223),
}


def worst_case_pool(cfg: StudyConfig, ds: Dataset) -> int:
    """Source rows left for the size grid whatever the split: every target-test key may be a
    source key (up to the overlap), then the hold-out (share of the rest, capped) comes off."""
    n_test = round(cfg.split.test * len(ds.target_y))
    eligible = len(ds.source_y) - min(n_test, ds.counts["joined_overlap"])
    return eligible - min(round(cfg.split.source_holdout * eligible), cfg.split.source_holdout_max)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s2r_cache")


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_joins_and_fits_its_size_grid(name, data_dir, cache_dir, tmp_path):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    quick = load_config(CONFIGS / f"{name}.yaml", quick=True)
    assert quick.repetitions == 2 and len(quick.sizes) < len(cfg.sizes)
    cfg.data.cache_dir = str(cache_dir)

    ds = load_dataset(cfg.data, rejected_csv=tmp_path / "rejected_rows.csv")

    n_source, n_target, overlap = EXPECTED[name]
    assert (len(ds.source_y), len(ds.target_y), ds.counts["joined_overlap"]) == (
        n_source,
        n_target,
        overlap,
    )
    assert np.isfinite(ds.source_X).all() and np.isfinite(ds.target_X).all()
    assert np.isfinite(ds.source_y).all() and np.isfinite(ds.target_y).all()
    assert len(set(ds.source_ids)) == len(ds.source_ids)
    assert ds.units and ds.n_features == ds.counts["features"] > 0
    assert (tmp_path / "rejected_rows.csv").is_file()
    pool = worst_case_pool(cfg, ds)
    assert max(cfg.sizes) <= pool and max(quick.sizes) <= pool


@pytest.mark.data
def test_the_simulation_alone_tracks_experiment(data_dir, cache_dir):
    """PROVENANCE.md: Pearson r 0.86 between the experimental gap and the minimum MP gap."""
    cfg = load_config(CONFIGS / "bandgap_mp.yaml")
    cfg.data.cache_dir = str(cache_dir)
    ds = load_dataset(cfg.data)
    has = np.isfinite(ds.target_reference)
    r = np.corrcoef(ds.target_reference[has], ds.target_y[has])[0, 1]
    assert r == pytest.approx(0.86, abs=0.01)


@pytest.mark.data
def test_a_second_study_on_the_same_data_reads_the_cache(data_dir, cache_dir):
    cfg = load_config(CONFIGS / "tg_afzal.yaml")
    cfg.data.cache_dir = str(cache_dir)
    first = load_dataset(cfg.data)
    ds = load_dataset(cfg.data)
    np.testing.assert_array_equal(first.source_X, ds.source_X)
    assert ds.counts["source_keys_featurized"] == ds.counts["target_keys_featurized"] == 0
    assert ds.counts["source_keys_cached"] == ds.counts["target_keys_cached"] == 314
