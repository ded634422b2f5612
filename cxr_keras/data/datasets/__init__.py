"""One module per dataset, each with ``NAME``, ``write_phantom(out, n, size, seed, workers,
progress)`` and ``load_table(root, **options)``. :data:`DATASETS` maps names to modules."""

from __future__ import annotations

import importlib

# Datasets with a phantom writer and a reader (every dataset with a manifest).
NAMES = ("nih", "chexpert", "pedicxr", "kermany", "montgomery", "lungmasks", "mura", "tbx11k",
         "shenzhen", "indiana", "rsna_boneage", "deepcovid")


def get(name: str):
    """Return the dataset module called ``name``."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
