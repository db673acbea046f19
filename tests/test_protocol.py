"""Splits, nested subsets, the leakage guard and grid validation."""

import numpy as np
import pytest

from s2r_ray.config import ConfigError, SplitConfig, StudyConfig, SyntheticData
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.protocol import Cell, make_plan, make_repetition

DS = make_synthetic(SyntheticData(n_source=1000, n_target=150))


def test_a_seed_reproduces_the_split_and_permutation():
    a, b = (make_repetition(DS, SplitConfig(), 0, seed=3) for _ in range(2))
    c = make_repetition(DS, SplitConfig(), 0, seed=4)
    for part in ("train", "val", "test", "pool", "holdout"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_splits_partition_the_target_and_subsets_are_nested():
    rep = make_repetition(DS, SplitConfig(), 0, seed=1)
    parts = np.concatenate([rep.train, rep.val, rep.test])
    assert sorted(parts) == list(range(len(DS.target_y)))
    small, large = rep.source_subset(100), rep.source_subset(400)
    np.testing.assert_array_equal(large[:100], small)
    assert not set(large) & set(rep.holdout)
    assert list(rep.target_train(20)) == list(rep.train[:20])


def test_target_test_identifiers_are_kept_out_of_the_source_pool():
    rep = make_repetition(DS, SplitConfig(), 0, seed=1)
    test_ids = set(DS.target_ids[rep.test])
    shared = test_ids & set(DS.source_ids)
    assert shared, "the synthetic pair must share identifiers for this test to mean anything"
    assert rep.excluded_for_leakage == len(shared)
    used = set(DS.source_ids[rep.pool]) | set(DS.source_ids[rep.holdout])
    assert not used & test_ids
    allowed = make_repetition(DS, SplitConfig(allow_test_ids_in_source=True), 0, seed=1)
    assert allowed.excluded_for_leakage == 0
    assert set(DS.source_ids[np.concatenate([allowed.pool, allowed.holdout])]) >= shared


def test_plan_orders_baselines_first_then_small_sizes():
    cfg = StudyConfig(name="t", sizes=[300, 30], repetitions=2)
    cells = make_plan(cfg, DS).cells
    assert [c.n for c in cells] == [0, 0, 30, 30, 300, 300]
    assert cells[2] == Cell(30, 0) and cells[2].id == "n30-mall-r0"
    assert Cell(30, 0, m=10).pretrain_id == Cell(30, 0).pretrain_id


def test_a_size_larger_than_the_pool_is_refused_naming_the_field():
    cfg = StudyConfig(name="t", sizes=[100, 5000], repetitions=1)
    with pytest.raises(ConfigError, match=r"sizes: \[5000\] exceed the source pool"):
        make_plan(cfg, DS)


def test_a_split_without_test_rows_is_refused():
    tiny = make_synthetic(SyntheticData(n_source=100, n_target=10))
    cfg = StudyConfig(name="t", sizes=[10], split={"test": 0.01})
    with pytest.raises(ConfigError, match="no test rows"):
        make_plan(cfg, tiny)


def test_target_sizes_above_the_train_split_are_refused():
    cfg = StudyConfig(name="t", sizes=[10], target_sizes=[20, 5000])
    with pytest.raises(ConfigError, match="target_sizes"):
        make_plan(cfg, DS)
