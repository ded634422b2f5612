"""Datasets: phantom generators, readers of the official layouts, decoding, cache, pipelines.

``cxr_keras.data.pipeline`` (tf.data) is TensorFlow-specific and imported on its own.
"""

from __future__ import annotations

from . import datasets
from .findings import VOCABULARY, harmonise
from .images import read_image, write_image


def load_table(dataset: str, root, **options):
    """Read ``dataset`` from its official layout under ``root`` into a DataFrame.

    Columns: ``path`` (absolute), ``split`` (train/val/test), ``patient_id`` where the dataset
    has one, and the labels (``df.attrs["labels"]``, 1.0/0.0/NaN) or an integer ``label`` with
    ``df.attrs["classes"]``. Options are the dataset reader's; see ``cxr_keras.data.datasets.<name>``.
    """
    return datasets.get(dataset).load_table(root, **options)


def write_phantom(dataset: str, out, n: int = 200, size: int = 256, seed: int = 0, **kw):
    """Write a phantom copy of ``dataset`` in its official layout under ``out``."""
    return datasets.get(dataset).write_phantom(out, n=n, size=size, seed=seed, **kw)


__all__ = ["load_table", "write_phantom", "read_image", "write_image", "datasets", "harmonise",
           "VOCABULARY"]
