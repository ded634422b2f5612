"""Kaggle "Chest X-ray Masks and Labels" (Shenzhen + Montgomery lung masks): phantom writer and
reader for the layout as downloaded.

Layout (``root`` is the folder holding ``Lung Segmentation``; some copies nest it in ``data/``)::

    Lung Segmentation/CXR_png/CHNCXR_0001_0.png ... MCUCXR_0001_0.png   800 images
    Lung Segmentation/masks/CHNCXR_0001_0_mask.png   Shenzhen masks carry a _mask suffix
    Lung Segmentation/masks/MCUCXR_0001_0.png        Montgomery masks have the image's name
    Lung Segmentation/test/CHNCXR_0181_0.png ...     96 Shenzhen images without a mask

800 images = 662 Shenzhen + 138 Montgomery; 704 masks = 566 Shenzhen + 138 Montgomery; the 96
images of ``test/`` are (our reading of 800 - 704 = 96) the Shenzhen images that have no mask,
so they also sit in ``CXR_png/``. The suffix ``_0``/``_1`` is normal/tuberculosis. Shenzhen
images are RGB PNGs of grey content; Montgomery images and all masks are grey (0/255).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import find_dataset_dir, finish_table, resolve_path, split_by_fractions

NAME = "lungmasks"
CLASSES = ("normal", "tuberculosis")
DIR = "Lung Segmentation"
NAME_RE = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])\.png$", re.IGNORECASE)
SOURCES = {"CHNCXR": "shenzhen", "MCUCXR": "montgomery"}
REAL_COUNTS = {"images": 800, "masks": 704, "test": 96, "shenzhen": 662, "montgomery": 138,
               "shenzhen_tb": 336, "montgomery_tb": 58}


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The ``n`` CXR_png images :func:`write_phantom` writes: dicts with ``name``, ``source``,
    ``label``, renderer ``seed`` and ``findings``, ``has_mask`` and ``rgb``. Deterministic."""
    rng = np.random.default_rng(seed)
    n_mont = int(round(n * REAL_COUNTS["montgomery"] / REAL_COUNTS["images"]))
    n_unmasked = int(round(n * REAL_COUNTS["test"] / REAL_COUNTS["images"]))
    if n >= 8:  # every kind present in small sets
        n_mont, n_unmasked = max(n_mont, 1), max(n_unmasked, 1)
    n_shen = n - n_mont
    plan = []
    for prefix, count, p_tb, top in (("CHNCXR", n_shen, 336 / 662, max(662, 2 * n)),
                                     ("MCUCXR", n_mont, 58 / 138, max(400, 2 * n))):
        numbers = np.sort(rng.choice(np.arange(1, top + 1), size=count, replace=False))
        unmasked = set(rng.permutation(count)[:n_unmasked].tolist()) if prefix == "CHNCXR" else set()
        for i, num in enumerate(numbers):
            label = int(rng.random() < p_tb)
            findings = (str(rng.choice(["TB_Active", "TB_Latent"])),) if label else ()
            plan.append(dict(name=f"{prefix}_{int(num):04d}_{label}.png", source=SOURCES[prefix],
                             label=label, seed=int(rng.integers(2**31)), findings=findings,
                             has_mask=i not in unmasked, rgb=prefix == "CHNCXR"))
    return plan


def mask_name(image_name: str) -> str:
    """The mask file name of an image: Shenzhen ``..._mask.png``, Montgomery the same name."""
    return image_name.replace(".png", "_mask.png") if image_name.upper().startswith("CHNCXR") else image_name


def _render_one(job):
    base, item, size = job
    base = Path(base)
    ph = phantom.render_chest(item["seed"], size, item["findings"])
    write_image(base / "CXR_png" / item["name"], ph.image, rgb=item["rgb"])
    if item["has_mask"]:
        lungs = ((np.asarray(ph.lung_left) > 0) | (np.asarray(ph.lung_right) > 0)).astype(np.uint8)
        write_image(base / "masks" / mask_name(item["name"]), lungs * 255)
    else:
        write_image(base / "test" / item["name"], ph.image, rgb=item["rgb"])
    return item["name"]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom under ``out/Lung Segmentation`` (returns ``out``) with the
    real proportions: 138/800 Montgomery, 96/800 Shenzhen images without a mask (also in test/)."""
    out = Path(out)
    base = out / DIR
    jobs = [(str(base), item, size) for item in phantom_plan(n, size, seed)]
    parallel_map(_render_one, jobs, workers, desc="lungmasks phantom", progress=progress)
    return out


# ----------------------------------------------------------------------------- reader

def _base_dir(root) -> Path:
    root = Path(root)
    if not (root / DIR).is_dir() and (root / "data" / DIR).is_dir():
        return root / "data" / DIR
    return find_dataset_dir(root, DIR, marker="CXR_png")


def _row(path: Path, mask: str) -> dict:
    m = NAME_RE.match(path.name)
    prefix = m.group(1).upper()
    return dict(path=str(resolve_path(path)), patient_id=f"{prefix}_{m.group(2)}",
                label=int(m.group(3)), mask=mask, source=SOURCES[prefix], image=path.name)


def load_table(root, fractions=(0.8, 0.1, 0.1), seed: int = 0,
               include_unlabelled: bool = False) -> pd.DataFrame:
    """Read "Chest X-ray Masks and Labels" under ``root``.

    One row per CXR_png image that has a mask. Columns: ``path``, ``split``, ``patient_id``
    (source prefix + number, e.g. ``CHNCXR_0001``), ``label`` (0 normal, 1 tuberculosis, from the
    ``_0``/``_1`` suffix), ``mask`` (``df.attrs["mask_columns"] == ["mask"]``), ``source``
    (shenzhen / montgomery), ``image``.

    Split: seeded ``fractions`` (default 80/10/10, mtpret's 718/89/89 proportions) over the
    images with a mask. The unmasked images of ``test/`` are not returned unless
    ``include_unlabelled=True``; they are then added as split ``"test"`` with ``mask == ""``
    (they have no ground truth, so segmentation metrics must skip them). A CXR_png image with no
    mask that is not in ``test/`` is listed in a warning, not an error; a mask whose image is
    missing is a DataError.
    """
    base = _base_dir(root)
    img_dir, mask_dir, test_dir = base / "CXR_png", base / "masks", base / "test"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"missing folder: {d}")
    images, odd = {}, []
    for p in sorted(img_dir.glob("*.png")):
        if NAME_RE.match(p.name):
            images[p.name] = p
        else:
            odd.append(p.name)
    if odd:
        warnings.warn(f"{img_dir}: {len(odd)} PNG(s) not named CHNCXR/MCUCXR_####_0|1.png skipped, "
                      f"e.g. {odd[:5]}", stacklevel=2)
    if not images:
        raise DataError(f"{img_dir}: no images named CHNCXR_####_0|1.png or MCUCXR_####_0|1.png")
    masks = {}
    for p in sorted(mask_dir.glob("*.png")):
        stem = p.stem[:-5] if p.stem.lower().endswith("_mask") else p.stem
        image = stem + ".png"
        if image in masks:
            raise DataError(f"{mask_dir}: two masks for image {image}: {masks[image].name}, {p.name}")
        if image not in images:
            raise DataError(f"mask {p} has no image: expected {img_dir / image}")
        masks[image] = p
    tests = {p.name: p for p in sorted(test_dir.glob("*.png"))} if test_dir.is_dir() else {}
    no_mask = [n for n in images if n not in masks and n not in tests]
    if no_mask:
        warnings.warn(f"{img_dir}: {len(no_mask)} image(s) have no mask in {mask_dir} and are not "
                      f"in {test_dir}; skipped: {no_mask[:10]}", stacklevel=2)
    rows = [_row(images[n], str(resolve_path(masks[n]))) for n in images if n in masks]
    if not rows:
        raise DataError(f"{base}: no image has a mask")
    df = split_by_fractions(pd.DataFrame(rows), fractions, seed, by="patient")
    if include_unlabelled:
        extra = [_row(p, "") for n, p in tests.items() if NAME_RE.match(n)]
        if extra:
            ext = pd.DataFrame(extra)
            ext["split"] = "test"
            df = pd.concat([df, ext], ignore_index=True)
    return finish_table(df, dataset=NAME, root=base.parent, classes=CLASSES, mask_columns=["mask"])
