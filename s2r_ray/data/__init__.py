"""Data for a study: `load_dataset` turns a `DataConfig` into the `Dataset` every stage uses."""

from s2r_ray.data.dataset import Dataset
from s2r_ray.data.reader import DataError
from s2r_ray.data.tables import load_dataset

__all__ = ["DataError", "Dataset", "load_dataset"]
