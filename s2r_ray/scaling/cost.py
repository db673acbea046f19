"""Seconds per cell as a function of n, cost = a + b·n^c, measured as the study runs.

A cell here is one (n, repetition): one pretraining on n rows and the trials and scoring of its
target sizes, which is what a steering decision buys. The fit reuses the power-law fit: with
u = 1/n, b·n^c = b'·(u/u_min)^-c, so fit_batch on (1/n, seconds) solves a, b >= 0 and c in
(0, 3] by the same variable projection. Errors are taken as relative (weights 1/seconds²).
With fewer than 3 distinct sizes the exponent is the prior's and only a, b are fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.powerlaw import fit_batch, solve_dc


@dataclass(frozen=True)
class CostModel:
    """cost(n) = a + b·n^c seconds per cell; fitted says whether it came from measurements."""

    a: float
    b: float
    c: float
    fitted: bool = False
    cells: int = 0

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        with np.errstate(over="ignore"):  # an n beyond any database costs inf seconds
            return self.a + self.b * np.asarray(n, float) ** self.c

    def to_dict(self) -> dict:
        source = f"fitted to {self.cells} cell(s)" if self.fitted else "prior guess"
        return json_safe(
            {"form": "a + b·n^c", "a": self.a, "b": self.b, "c": self.c, "source": source}
        )

    def fit(self, n: np.ndarray, seconds: np.ndarray) -> CostModel:
        """This model (the prior) refitted to observed (n, seconds) of finished cells."""
        n, s = np.asarray(n, float), np.asarray(seconds, float)
        ok = np.isfinite(n) & np.isfinite(s) & (n > 0) & (s > 0)
        n, s = n[ok], s[ok]
        if n.size == 0:
            return self
        w = 1.0 / s**2
        if np.unique(n).size >= 3:
            p = fit_batch(1.0 / n, s[None], w[None])
            c = float(p.alpha[0])
            b = float(p.D_ref[0]) * float(n.max()) ** -c
            return CostModel(float(p.C[0]), b, c, True, int(n.size))
        x = n**self.c
        if np.unique(n).size == 2:
            sums = (w.sum(), (w * x).sum(), (w * s).sum(), (w * x * x).sum(), (w * x * s).sum())
            b, a = solve_dc(*sums, True)
            return CostModel(float(a), float(b), self.c, True, int(n.size))
        scale = float(np.mean(s / self(n)))  # one size: keep the prior's shape, fix its level
        return CostModel(self.a * scale, self.b * scale, self.c, True, int(n.size))
