"""s2r-ray: distributed Sim2Real scaling studies for materials science.

From Python: `open_study`, `fit_table`, `run_study` and `Study` (see `s2r_ray.api`). They are
imported on first use, so `import s2r_ray`, and with it every `s2r` command, stays light.
"""

__version__ = "0.1.0"
__all__ = ["Study", "fit_table", "open_study", "run_study"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from s2r_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 's2r_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
