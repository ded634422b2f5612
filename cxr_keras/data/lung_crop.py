"""Mask ensemble and lung cropping of the multi-loss paper (sec. 2.2.3), NumPy + OpenCV.

Pipeline: :func:`and_ensemble` of the top-3 models' masks -> :func:`lung_bbox` of the final mask ->
crop the image -> bicubic resize to 512 x 512 -> :func:`contrast_stretch` (saturate the darkest
and brightest 1 %) -> float32 in [0, 1]. :func:`lung_crop` does the last four steps.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..progress import Progress
from .images import read_image, write_image
from .tables import finish_table


def and_ensemble(masks, threshold=0.5):
    """Bitwise-AND ensemble: binarise each model's mask as ``mask > threshold`` and AND them.

    ``masks``: a list (or array with the models first) of K same-shaped masks, each (H, W),
    (N, H, W) or with a trailing 1. Returns uint8 {0, 1} of one member's shape.
    """
    if isinstance(masks, np.ndarray):
        members = list(masks)
    else:
        members = [np.asarray(m) for m in masks]
    if not members:
        raise ValueError("and_ensemble: no masks given")
    shape = members[0].shape
    out = np.ones(shape, bool)
    for i, m in enumerate(members):
        if m.shape != shape:
            raise ValueError(f"and_ensemble: mask {i} has shape {m.shape}, expected {shape}")
        out &= m > threshold
    return out.astype(np.uint8)


def _grey(image):
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[-1] == 3:
        a = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)   # RGB luma
    if a.ndim != 2:
        raise ValueError(f"expected a grey image (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    return a


def lung_bbox(mask, margin=0.0, return_found=False):
    """Bounding box ``(y0, y1, x0, x1)`` of the nonzero pixels of a 2-D mask, end-exclusive.

    ``margin``: fraction of the box's height / width added on each side (rounded to whole
    pixels; the original code widened by 5 %), clipped to the image. An empty mask gives the
    whole image and a RuntimeWarning; ``return_found=True`` returns ``(bbox, found)`` instead
    and does not warn.
    """
    m = _grey(mask) != 0
    h, w = m.shape
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    found = rows.size > 0
    if not found:
        if not return_found:
            warnings.warn("lung_bbox: empty mask, using the whole image", RuntimeWarning,
                          stacklevel=2)
        box = (0, h, 0, w)
    else:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        dy = int(round(margin * (y1 - y0)))
        dx = int(round(margin * (x1 - x0)))
        box = (max(0, y0 - dy), min(h, y1 + dy), max(0, x0 - dx), min(w, x1 + dx))
    return (box, found) if return_found else box


def contrast_stretch(image, low=1.0, high=99.0):
    """Saturate pixels below the ``low`` and above the ``high`` percentile, scale to [0, 1] float32.

    The paper saturates "the top and bottom 1 % of all the image pixels". A constant image (upper
    percentile <= lower) gives zeros.
    """
    a = _grey(image).astype(np.float32)
    lo, hi = np.percentile(a, [low, high])
    if not hi > lo:
        return np.zeros(a.shape, np.float32)
    return np.clip((a - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def _scale_box(box, mask_shape, image_shape):
    """Map an end-exclusive box from mask pixels to image pixels, keeping every covered pixel."""
    y0, y1, x0, x1 = box
    sy = image_shape[0] / mask_shape[0]
    sx = image_shape[1] / mask_shape[1]
    Y0, X0 = int(math.floor(y0 * sy + 1e-9)), int(math.floor(x0 * sx + 1e-9))
    Y1, X1 = int(math.ceil(y1 * sy - 1e-9)), int(math.ceil(x1 * sx - 1e-9))
    Y1, X1 = min(image_shape[0], max(Y1, Y0 + 1)), min(image_shape[1], max(X1, X0 + 1))
    return Y0, Y1, X0, X1


def lung_crop(image, mask, size=512, margin=0.0, low=1.0, high=99.0, return_info=False):
    """Crop the image to the lung bounding box, resize bicubic, contrast stretch (paper sec. 2.2.3).

    ``image``: grey (H, W) (or (H, W, 1) / (H, W, 3)), any numeric dtype. ``mask``: binary
    lung mask (e.g. :func:`and_ensemble` output), possibly at another resolution -- its box is
    scaled to the image (outward to whole pixels). ``size``: int or (height, width), default
    512 x 512. Returns float32 (size, size) in [0, 1]; with ``return_info`` also a dict
    ``{"bbox_mask", "bbox_image", "found"}``. An empty mask crops nothing (whole image) and warns,
    or sets ``found`` False with ``return_info``.
    """
    img = _grey(image).astype(np.float32)
    m = _grey(mask)
    box, found = lung_bbox(m, margin=margin, return_found=True)
    y0, y1, x0, x1 = _scale_box(box, m.shape, img.shape)
    if not found and not return_info:
        warnings.warn("lung_crop: empty mask, using the whole image", RuntimeWarning, stacklevel=2)
    crop = np.ascontiguousarray(img[y0:y1, x0:x1])
    oh, ow = (size, size) if np.isscalar(size) else tuple(size)
    resized = cv2.resize(crop, (int(ow), int(oh)), interpolation=cv2.INTER_CUBIC)
    out = contrast_stretch(resized, low, high)
    if return_info:
        return out, {"bbox_mask": box, "bbox_image": (y0, y1, x0, x1), "found": found}
    return out


def write_lung_crops(paths, masks, out, *, size=512, margin=0.0, low=1.0, high=99.0,
                     progress: bool = True) -> tuple[list, int]:
    """:func:`lung_crop` every image ``paths[i]`` with ``masks[i]`` into ``out/<i:05d>_<stem>.png``
    (8-bit; files already there are kept, so an interrupted run resumes). Returns the crops'
    paths and how many masks were empty (those images are kept whole)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, bar = [], Progress(len(paths), "lung crops", enabled=progress)
    for i, (path, mask) in enumerate(zip(paths, masks)):
        dest = out / f"{i:05d}_{Path(path).stem}.png"
        if not dest.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an empty mask: counted below
                crop = lung_crop(read_image(path), mask, size=size, margin=margin, low=low, high=high)
            write_image(dest, np.round(crop * 255).astype(np.uint8))
        written.append(str(dest.resolve()))
        bar.update(1)
    return written, int(sum(not np.any(m) for m in masks))


def lung_crop_table(rows, masks, out, *, dataset: str, classes, size=512, margin=0.0, low=1.0,
                    high=99.0) -> tuple[pd.DataFrame, int]:
    """The table of the images of ``rows`` (a cache's rows: path, split, label and patient_id if
    any) lung-cropped with ``masks`` into ``out`` (:func:`write_lung_crops`): each crop keeps its
    split, label and patient, ``source`` names the original. Returns (table, empty masks)."""
    crops, empty = write_lung_crops(rows["path"].tolist(), masks, out, size=size, margin=margin,
                                    low=low, high=high)
    records = pd.DataFrame(dict(
        path=crops, split=rows["split"].to_numpy(), label=rows["label"].astype(int).to_numpy(),
        patient_id=rows["patient_id"].to_numpy() if "patient_id" in rows else "",
        source=rows["path"].to_numpy()))
    return finish_table(records, dataset=dataset, root=out, classes=classes), empty
