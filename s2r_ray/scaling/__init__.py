"""Scaling-law fitting for Sim2Real studies: E(n) = D·n^-α + C and everything around it.

Public API: PowerLawFit (fit, predict, n_for_target, to_dict); fit_batch and Params
(the vectorised variable-projection fit); m_axis (target-size axis and equivalent experimental
sample size); json_safe and ci_key (how results are serialised and keyed).

Modules, one job each: powerlaw (the fit), groups (repetitions per size, weights), bootstrap,
alternatives (rival forms, AICc), backtest, diagnostics (the words), estimator (PowerLawFit),
equivalent and target_axis (the m axis), simulate (synthetic studies with known truth).
"""

from s2r_ray.scaling.estimator import UNREACHABLE, PowerLawFit, ci_key
from s2r_ray.scaling.jsonsafe import json_safe
from s2r_ray.scaling.powerlaw import ALPHA_MAX, ALPHA_MIN, Params, fit_batch
from s2r_ray.scaling.target_axis import m_axis

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "UNREACHABLE",
    "Params",
    "PowerLawFit",
    "ci_key",
    "fit_batch",
    "json_safe",
    "m_axis",
]
