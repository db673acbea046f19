"""The views of a study's report: terminal text, MLflow notes, report.html and the plots.

Every view formats the one report dict (`s2r_ray.report`) with the formatters of
`render.format`; none computes a number of its own.
"""
