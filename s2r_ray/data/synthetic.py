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

from collections.abc import Callable, Iterator

import numpy as np

from s2r_ray.config import SyntheticData
from s2r_ray.data.dataset import Dataset

Function = Callable[[np.ndarray], np.ndarray]
_WIDTH = 32  # hidden units of the teacher f and random Fourier features of g
CHUNK_ROWS = 1 << 18  # source rows drawn at a time: 128 MiB of float64 at 64 features


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
    exercises the leakage guard and the simulation-alone reference. The source is drawn in
    blocks of `CHUNK_ROWS` into one float32 matrix, with no float64 copy of the whole pool; the
    shared rows are drawn again in float64 from the saved stream, so every number equals the
    one-block generator's.
    """
    rng = np.random.default_rng(cfg.seed)
    d, n = cfg.n_features, cfg.n_source
    w1 = rng.normal(size=(d, _WIDTH))
    b1 = rng.normal(scale=0.5, size=_WIDTH)
    w2 = rng.normal(size=_WIDTH) / np.sqrt(_WIDTH)
    a = rng.normal(size=d) / np.sqrt(d)
    missing = _missing_physics(cfg)

    def modelled(X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ w1 / np.sqrt(d) * 1.5 + b1) @ w2 * 2.0

    stream = rng.bit_generator.state
    Xs, ys = np.empty((n, d), dtype=np.float32), np.empty(n)
    for lo, hi, X in _blocks(rng, n, d):
        ys[lo:hi] = modelled(X) + cfg.bias * (X @ a + 1.0)  # simulated: f + a smooth bias
        Xs[lo:hi] = X
    for lo in range(0, n, CHUNK_ROWS):  # + noise, drawn after the whole matrix as before
        hi = min(n, lo + CHUNK_ROWS)
        ys[lo:hi] += rng.normal(scale=cfg.source_noise, size=hi - lo)
    source_ids = _ids(n)

    n_shared = min(cfg.n_target // 3, n)
    shared = rng.choice(n, size=n_shared, replace=False)
    Xt = np.vstack([_rows(stream, n, d, shared), rng.normal(size=(cfg.n_target - n_shared, d))])
    yt = modelled(Xt) + missing(Xt) + rng.normal(scale=cfg.target_noise, size=cfg.n_target)
    target_ids = np.concatenate(
        [source_ids[shared], [f"M{n + j:06d}" for j in range(cfg.n_target - n_shared)]]
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
        counts={"source_rows": n, "target_rows": cfg.n_target},
    )


def _blocks(rng: np.random.Generator, n: int, d: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end, float64 rows) of n x d standard normals, drawn block by block: the
    stream yields the same numbers as one draw of the whole matrix."""
    for lo in range(0, n, CHUNK_ROWS):
        hi = min(n, lo + CHUNK_ROWS)
        yield lo, hi, rng.normal(size=(hi - lo, d))


def _rows(stream: dict, n: int, d: int, at: np.ndarray) -> np.ndarray:
    """Rows `at` of the float64 source matrix, drawn again from the stream state it began at
    (only as far as the last row asked for)."""
    rng = np.random.default_rng()
    rng.bit_generator.state = stream
    out = np.empty((len(at), d))
    last = int(at.max()) if len(at) else -1
    for lo, hi, X in _blocks(rng, n, d):
        if lo > last:
            break
        mine = (at >= lo) & (at < hi)
        out[mine] = X[at[mine] - lo]
    return out


def _ids(n: int) -> np.ndarray:
    """'M000042' for row 42 (f"M{i:06d}"), built in numpy block by block, not as 10^7 Python
    strings."""
    out = np.empty(n, dtype=f"<U{max(6, len(str(max(n - 1, 0)))) + 1}")
    for lo in range(0, n, CHUNK_ROWS):
        digits = np.arange(lo, min(n, lo + CHUNK_ROWS)).astype(str)
        out[lo : lo + CHUNK_ROWS] = np.strings.add("M", np.strings.zfill(digits, 6))
    return out
