"""A synthetic Sim2Real pair that needs no files: the embedded default of the demo study.

The story it tells is the one of Minami et al. (2025). The real property is f(x) + g(x): f is
what the simulation models (a smooth random teacher network), g is physics it leaves out (think
of the excitonic or correlation effects a cheap functional misses): a rough, oscillating
function of the descriptors. The simulated property is f(x) plus a smooth systematic bias (an
offset and a linear trend) plus noise. Pretraining on n simulated rows learns f, better as n
grows; fine-tuning on m experimental rows corrects the bias easily but learns only part of g,
and more simulation cannot teach what the simulation lacks. So the error E(n) levels off at a
transfer gap C > 0 that shrinks only with more experimental rows m, and a simulated row is
worth fewer experimental rows the more of them one already has.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from s2r_ray.config import SyntheticData
from s2r_ray.data.dataset import Dataset

Function = Callable[[np.ndarray], np.ndarray]
_WIDTH = 32  # hidden units of the teacher f and random Fourier features of g


def _missing_physics(cfg: SyntheticData) -> Function:
    """g: a sum of random Fourier features with standard deviation ~ cfg.missing.

    Drawn from its own random stream, so that missing = 0 leaves every other array as it was.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    d = cfg.n_features
    w = rng.normal(size=(d, _WIDTH)) * cfg.missing_roughness / np.sqrt(d)
    phase = rng.uniform(-np.pi, np.pi, size=_WIDTH)
    amp = rng.normal(size=_WIDTH) * np.sqrt(2.0 / _WIDTH) * cfg.missing
    return lambda X: np.sin(X @ w + phase) @ amp


def make_synthetic(cfg: SyntheticData) -> Dataset:
    """Real = f(x) + g(x) + noise; simulated = f(x) + bias(x) + noise (see the module docstring).

    A third of the target materials also occur in the source, as real databases overlap, which
    exercises the leakage guard and the simulation-alone reference.
    """
    rng = np.random.default_rng(cfg.seed)
    d = cfg.n_features
    w1 = rng.normal(size=(d, _WIDTH))
    b1 = rng.normal(scale=0.5, size=_WIDTH)
    w2 = rng.normal(size=_WIDTH) / np.sqrt(_WIDTH)
    a = rng.normal(size=d) / np.sqrt(d)
    missing = _missing_physics(cfg)

    def modelled(X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ w1 / np.sqrt(d) * 1.5 + b1) @ w2 * 2.0

    Xs = rng.normal(size=(cfg.n_source, d))
    ys = modelled(Xs) + cfg.bias * (Xs @ a + 1.0)  # simulated: f + a smooth bias, + noise
    ys = ys + rng.normal(scale=cfg.source_noise, size=cfg.n_source)
    source_ids = np.array([f"M{i:06d}" for i in range(cfg.n_source)])

    n_shared = min(cfg.n_target // 3, cfg.n_source)
    shared = rng.choice(cfg.n_source, size=n_shared, replace=False)
    Xt = np.vstack([Xs[shared], rng.normal(size=(cfg.n_target - n_shared, d))])
    yt = modelled(Xt) + missing(Xt) + rng.normal(scale=cfg.target_noise, size=cfg.n_target)
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
