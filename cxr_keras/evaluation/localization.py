"""Localisation of Grad-CAM heatmaps against the NIH ChestX-ray14 boxes (``BBox_List_2017.csv``;
MLRFNet Fig. 11): box mapping to the model input, the pointing game and heatmap / box IoU.

Pixel convention: a box ``(x, y, w, h)`` is in continuous pixel coordinates (column x, row y of
its top-left corner) and pixel ``(row r, column c)`` covers ``[c, c+1) x [r, r+1)``. A pixel
belongs to a box when its centre ``(c + 0.5, r + 0.5)`` lies in the closed box, so an integer box
``(2, 3, 4, 5)`` is exactly columns 2..5 and rows 3..7.
"""

from __future__ import annotations

import numbers

import numpy as np


def _box(box_xywh, name="box_xywh"):
    try:
        box = tuple(float(v) for v in box_xywh)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be four numbers (x, y, w, h), got {box_xywh!r}") from None
    if len(box) != 4 or not all(np.isfinite(box)):
        raise ValueError(f"{name} must be four finite numbers (x, y, w, h), got {box_xywh!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{name}: width and height must be >= 0, got {box_xywh!r}")
    return box


def _real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _heatmap(heatmap):
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"heatmap must be a non-empty (H, W) array, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap contains NaN or infinite values")
    return h


def map_box(box_xywh, original_hw, cache_size, crop_size):
    """Box in original-image pixels -> box in model-input pixels, as float ``(x, y, w, h)``.

    The image is squashed to ``cache_size`` x ``cache_size`` (aspect ratio ignored), then
    centre-cropped to ``crop_size`` (offset ``(cache_size - crop_size) // 2``); the box is scaled,
    shifted and clipped to ``[0, crop_size]`` (a box outside the crop gets zero width/height).
    """
    x, y, w, h = _box(box_xywh)
    try:
        oh, ow = (float(v) for v in original_hw)
    except (TypeError, ValueError):
        raise ValueError(f"original_hw must be (height, width), got {original_hw!r}") from None
    if oh <= 0 or ow <= 0:
        raise ValueError(f"original_hw must be positive, got {original_hw!r}")
    for arg, v in (("cache_size", cache_size), ("crop_size", crop_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if crop_size > cache_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed cache_size ({cache_size})")
    off = (cache_size - crop_size) // 2
    sx, sy = cache_size / ow, cache_size / oh
    x0, x1 = np.clip([x * sx - off, (x + w) * sx - off], 0, crop_size)
    y0, y1 = np.clip([y * sy - off, (y + h) * sy - off], 0, crop_size)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def boxes_on_rows(boxes, rows, labels, cache_size: int, crop_size: int, limit: int | None = None):
    """The ``boxes`` (a table with ``image``, ``finding``, ``x``, ``y``, ``w``, ``h``, e.g. NIH's
    BBox_List_2017) on the images of ``rows`` (a cache split's rows: ``image``, ``orig_h``,
    ``orig_w``) whose finding is one of ``labels``, the first ``limit``: (each box's row index,
    its finding, the box on the model input (:func:`map_box`)), or None where there is none."""
    rows = rows.reset_index(drop=True)
    where = {name: i for i, name in enumerate(rows["image"])}
    boxes = boxes.loc[boxes["image"].isin(where) & boxes["finding"].isin(labels)]
    if limit is not None:
        boxes = boxes.head(limit)
    if boxes.empty:
        return None
    idx = np.array([where[n] for n in boxes["image"]])
    mapped = [map_box((b.x, b.y, b.w, b.h), (int(rows.loc[i, "orig_h"]), int(rows.loc[i, "orig_w"])),
                      cache_size, crop_size) for b, i in zip(boxes.itertuples(), idx)]
    return idx, list(boxes["finding"]), mapped


def _box_mask(shape, box, margin=0.0):
    """Pixels whose centre lies in the closed box enlarged by ``margin`` on every side."""
    x, y, w, h = box
    cols = np.arange(shape[1]) + 0.5
    rows = np.arange(shape[0]) + 0.5
    in_c = (cols >= x - margin) & (cols <= x + w + margin)
    in_r = (rows >= y - margin) & (rows <= y + h + margin)
    return in_r[:, None] & in_c[None, :]


def pointing_game(heatmap, box_xywh, tolerance=0) -> bool:
    """Hit when the heatmap's maximum lies in the box enlarged by ``tolerance`` pixels.

    ``heatmap``: (H, W) at input resolution; ``box_xywh`` in input pixels (:func:`map_box`).
    With tied maxima, a hit if any of them is inside (lenient). A flat heatmap (all values
    equal, e.g. an all-zero Grad-CAM) points nowhere and is a miss. Zhang et al. (2016) use a
    15-pixel tolerance at their resolution; our default 0 (the box itself) is a choice, stricter.
    """
    h = _heatmap(heatmap)
    box = _box(box_xywh)
    if not _real(tolerance) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    top = h.max()
    if top == h.min():
        return False
    return bool(np.any((h == top) & _box_mask(h.shape, box, float(tolerance))))


def heatmap_iou(heatmap, box_xywh, threshold=0.5) -> float:
    """IoU between the region ``heatmap >= threshold * max`` and the box's pixel mask.

    A heatmap whose maximum is <= 0 (e.g. all zero) has an empty region (IoU 0); IoU is 0 when
    region and box are both empty.
    """
    h = _heatmap(heatmap)
    box = _box(box_xywh)
    if not _real(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    top = h.max()
    region = (h >= threshold * top) if top > 0 else np.zeros(h.shape, dtype=bool)
    mask = _box_mask(h.shape, box)
    union = np.count_nonzero(region | mask)
    return float(np.count_nonzero(region & mask) / union) if union else 0.0


def _summary(hits, ious):
    n = len(hits)
    return {"n": n, "pointing_accuracy": float(np.mean(hits)) if n else float("nan"),
            "mean_iou": float(np.mean(ious)) if n else float("nan")}


def localization_scores(heatmaps, boxes, labels, tolerance=0, threshold=0.5) -> dict:
    """Pointing accuracy and mean IoU per finding and over all boxes.

    ``heatmaps``: N (H, W) maps (the Grad-CAM of the box's finding); ``boxes``: N boxes
    ``(x, y, w, h)`` in input pixels; ``labels``: N finding names. An image with two boxes
    appears twice. Returns ``{"per_label": {label: {"n", "pointing_accuracy", "mean_iou"}},
    "overall": {...}}``; overall averages over boxes (not over labels); labels keep first-seen
    order.
    """
    heatmaps, boxes, labels = list(heatmaps), list(boxes), list(labels)
    if not (len(heatmaps) == len(boxes) == len(labels)):
        raise ValueError(f"heatmaps ({len(heatmaps)}), boxes ({len(boxes)}) and labels "
                         f"({len(labels)}) must have the same length")
    hits = [pointing_game(m, b, tolerance) for m, b in zip(heatmaps, boxes)]
    ious = [heatmap_iou(m, b, threshold) for m, b in zip(heatmaps, boxes)]
    per_label = {}
    for lab in dict.fromkeys(labels):
        idx = [i for i, v in enumerate(labels) if v == lab]
        per_label[lab] = _summary([hits[i] for i in idx], [ious[i] for i in idx])
    return {"per_label": per_label, "overall": _summary(hits, ious)}


def localization_table(by_level: dict) -> list:
    """Markdown lines: per finding (and ``all``), its box count and ``pointing accuracy / mean
    IoU`` (3 decimals) of each level's :func:`localization_scores` (``by_level``: level ->
    scores with a ``layer`` entry, the layer in the column's title)."""
    lines = ["| finding | boxes | " + " | ".join(f"{lv} (`{v['layer']}`)" for lv, v in by_level.items())
             + " |", "|---|---:|" + "---:|" * len(by_level)]
    first = next(iter(by_level.values()))
    for k in list(first["per_label"]) + ["all"]:
        cells = []
        for v in by_level.values():
            s = v["overall"] if k == "all" else v["per_label"][k]
            cells.append(f"{s['pointing_accuracy']:.3f} / {s['mean_iou']:.3f}")
        n = (first["overall"] if k == "all" else first["per_label"][k])["n"]
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    return lines
