"""A synthetic Sim2Real pair that needs no files: the embedded default of the demo study."""

from __future__ import annotations

import numpy as np

from s2r_ray.config import SyntheticData
from s2r_ray.data.dataset import Dataset


def make_synthetic(cfg: SyntheticData) -> Dataset:
    """Real property f(x): a smooth random teacher network; simulated = f(x) + bias(x) + noise.

    The bias is smooth (an offset plus a linear trend), so a model pretrained on the simulation
    learns f's shape and fine-tuning only has to correct the bias: transfer pays off, and more
    simulated rows pay off more. A third of the target materials also occur in the source, as
    real databases overlap, which exercises the leakage guard and the simulation-alone reference.
    """
    rng = np.random.default_rng(cfg.seed)
    d, width = cfg.n_features, 32
    w1 = rng.normal(size=(d, width))
    b1 = rng.normal(scale=0.5, size=width)
    w2 = rng.normal(size=width) / np.sqrt(width)
    a = rng.normal(size=d) / np.sqrt(d)

    def real(X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ w1 / np.sqrt(d) * 1.5 + b1) @ w2 * 2.0

    def simulated(X: np.ndarray) -> np.ndarray:
        return real(X) + cfg.bias * (X @ a + 1.0)

    Xs = rng.normal(size=(cfg.n_source, d))
    ys = simulated(Xs) + rng.normal(scale=cfg.source_noise, size=cfg.n_source)
    source_ids = np.array([f"M{i:06d}" for i in range(cfg.n_source)])

    n_shared = min(cfg.n_target // 3, cfg.n_source)
    shared = rng.choice(cfg.n_source, size=n_shared, replace=False)
    Xt = np.vstack([Xs[shared], rng.normal(size=(cfg.n_target - n_shared, d))])
    yt = real(Xt) + rng.normal(scale=cfg.target_noise, size=cfg.n_target)
    target_ids = np.concatenate(
        [source_ids[shared], [f"M{cfg.n_source + j:06d}" for j in range(cfg.n_target - n_shared)]]
    )
    reference = np.full(cfg.n_target, np.nan)
    reference[:n_shared] = ys[shared]
    return Dataset(
        source_X=Xs,
        source_y=ys,
        source_ids=source_ids,
        target_X=Xt,
        target_y=yt,
        target_ids=target_ids,
        feature_names=[f"x{i}" for i in range(d)],
        property_name="synthetic property",
        units="a.u.",
        target_reference=reference,
        counts={"source_rows": cfg.n_source, "target_rows": cfg.n_target},
    )
