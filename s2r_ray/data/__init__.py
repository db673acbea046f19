"""Data for a study: `load_dataset` turns a `DataConfig` into the `Dataset` every stage uses."""

from s2r_ray.data.dataset import Dataset
from s2r_ray.data.tables import DataError, load_dataset

__all__ = ["DataError", "Dataset", "load_dataset"]
