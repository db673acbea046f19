"""Large source pools (#19): drawn in blocks, read by index, never copied whole, and every number
the same as with the whole matrix in memory."""

from __future__ import annotations

import numpy as np
import pytest

from s2r_ray.config import SyntheticData, build_config
from s2r_ray.data import dataset, synthetic
from s2r_ray.data.dataset import Rows
from s2r_ray.models import make_family, torch_family
from s2r_ray.models.mlp import Scaler
from s2r_ray.protocol import Cell, make_plan


def _pair(n: int = 900, d: int = 5) -> SyntheticData:
    return SyntheticData(n_source=n, n_target=60, n_features=d, missing=0.2)


def test_synthetic_drawn_in_blocks_equals_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = synthetic.make_synthetic(_pair())
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 128)  # 8 blocks, shared rows drawn again
    blocks = synthetic.make_synthetic(_pair())
    assert blocks.source_X.dtype == np.float32
    for name in ("source_X", "source_y", "source_ids", "target_X", "target_y", "target_ids"):
        assert np.array_equal(getattr(whole, name), getattr(blocks, name)), name
    assert np.array_equal(whole.target_reference, blocks.target_reference, equal_nan=True)
    assert blocks.source_ids[42] == "M000042"


def test_scaler_by_blocks_equals_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(5000, 7)) * rng.uniform(0.1, 50, 7)).astype(np.float32)
    rows, extra = rng.permutation(5000)[:3001], X[:40]
    monkeypatch.setattr(dataset, "BLOCK_ROWS", 256)
    fitted = Scaler.fit(Rows.of(X, rows) + Rows.of(extra))
    X64 = np.vstack([X[rows], extra]).astype(np.float64)
    assert np.array_equal(fitted.center, X64.mean(axis=0))
    assert np.array_equal(fitted.scale, X64.std(axis=0))


def test_pretraining_on_a_view_encoded_per_batch_equals_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pretraining reads its n rows from the pool by index, encoding each batch as drawn: the
    network is the one a copy of the rows, encoded whole, trains."""
    cfg = build_config(
        {
            "name": "view",
            "sizes": [400],
            "data": {"synthetic": _pair().model_dump()},
            "model": {"hidden": [16]},
            "pretrain": {"max_steps": 120, "min_steps_per_eval": 40},
        }
    )
    plan = make_plan(cfg, synthetic.make_synthetic(cfg.data.synthetic))
    family, cell = make_family(cfg), Cell(400, 0)
    view, y, X_hold, y_hold = plan.source_split(cell)
    assert isinstance(view, Rows) and view.parts[0][0] is plan.dataset.source_X  # no copy
    extra = plan.dataset.target_X[plan.repetitions[0].train]
    copy = family.pretrain(view.materialize(), y, X_hold, y_hold, seed=5, X_extra=extra)
    monkeypatch.setattr(torch_family, "ENCODE_WHOLE_BYTES", 0)  # every batch encoded as drawn
    monkeypatch.setattr(dataset, "BLOCK_ROWS", 64)
    drawn = family.pretrain(view, y, X_hold, y_hold, seed=5, X_extra=extra)
    assert drawn.curve == copy.curve
    for k, w in copy.state["weights"].items():
        assert np.array_equal(w, drawn.state["weights"][k]), k
    for k, v in copy.state["encoder"].items():
        assert np.array_equal(v, drawn.state["encoder"][k]), k
