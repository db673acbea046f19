"""s2r-ray: distributed Sim2Real scaling studies for materials science."""

__version__ = "0.1.0"
