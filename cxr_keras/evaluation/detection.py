"""Box detection metrics (mtpret, TBX11K): per-class average precision at one IoU threshold and
their mean (mAP), COCO-style.

Matching, per class over the whole set: detections in order of decreasing score (ties keep their
input order); each takes the not-yet-matched ground-truth box of its image with the highest IoU,
if that IoU is >= the threshold (a true positive), else it is a false positive (duplicates
included). AP is the area under the precision envelope (precision made non-increasing in recall),
sampled at 101 recall points (COCO; ``interpolation="coco"``) or integrated exactly over the
recall steps (Pascal VOC 2010+, ``"voc"``). Classes without a ground-truth box get no AP and do
not enter the mean; a class with boxes but no detections has AP 0.

Boxes are ``(x1, y1, x2, y2)`` in any unit, x2 > x1 and y2 > y1.
"""

from __future__ import annotations

import numpy as np

from ..io import DataError


def box_iou(a, b) -> np.ndarray:
    """(N, M) intersection over union of boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(tp, n_gt: int, interpolation: str = "coco") -> float:
    """AP from the true-positive flags of detections already sorted by decreasing score."""
    if interpolation not in ("coco", "voc"):
        raise ValueError(f"interpolation must be 'coco' or 'voc', got {interpolation!r}")
    if n_gt == 0:
        return float("nan")
    tp = np.asarray(tp, np.float64)
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if interpolation == "voc":
        r = np.concatenate([[0.0], recall])
        return float(np.sum((r[1:] - r[:-1]) * envelope))
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side="left")  # first detection reaching each recall
    return float(np.mean(np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)))


def _check(item, i, kind, need_scores):
    keys = ("boxes", "labels") + (("scores",) if need_scores else ())
    missing = [k for k in keys if k not in item]
    if missing:
        raise DataError(f"{kind}[{i}]: missing {missing}")
    boxes = np.asarray(item["boxes"], np.float64).reshape(-1, 4)
    labels = np.asarray(item["labels"]).reshape(-1)
    if len(labels) != len(boxes):
        raise DataError(f"{kind}[{i}]: {len(boxes)} boxes but {len(labels)} labels")
    if len(boxes) and np.any(boxes[:, 2:] <= boxes[:, :2]):
        raise DataError(f"{kind}[{i}]: a box with x2 <= x1 or y2 <= y1")
    scores = np.asarray(item["scores"], np.float64).reshape(-1) if need_scores else None
    if need_scores and len(scores) != len(boxes):
        raise DataError(f"{kind}[{i}]: {len(boxes)} boxes but {len(scores)} scores")
    return boxes, labels, scores


def detection_ap(predictions, ground_truth, class_names, iou_threshold: float = 0.5,
                 interpolation: str = "coco") -> dict:
    """Per-class AP and mAP.

    ``predictions`` / ``ground_truth``: one dict per image, ``{"boxes": (K, 4), "labels": (K,)
    class indices, "scores": (K,)}`` (no scores in the ground truth). Returns ``{"per_class":
    {name: AP or NaN}, "mAP": mean over classes with boxes, "n_gt": {name: count},
    "iou_threshold": ...}``.
    """
    if len(predictions) != len(ground_truth):
        raise DataError(f"{len(predictions)} prediction entries for {len(ground_truth)} images")
    preds = [_check(p, i, "predictions", True) for i, p in enumerate(predictions)]
    gts = [_check(g, i, "ground_truth", False) for i, g in enumerate(ground_truth)]
    per_class, n_gt = {}, {}
    for c, name in enumerate(class_names):
        gt_c = [boxes[labels == c] for boxes, labels, _ in gts]
        count = sum(len(g) for g in gt_c)
        dets = [(s, i, box) for i, (boxes, labels, scores) in enumerate(preds)
                for box, lab, s in zip(boxes, labels, scores) if lab == c]
        order = sorted(range(len(dets)), key=lambda k: -dets[k][0])  # stable for ties
        used = [np.zeros(len(g), bool) for g in gt_c]
        tp = []
        for k in order:
            _, i, box = dets[k]
            hit = False
            if len(gt_c[i]):
                iou = box_iou(box[None], gt_c[i])[0]
                iou[used[i]] = -1.0
                j = int(np.argmax(iou))
                if iou[j] >= iou_threshold:
                    used[i][j], hit = True, True
            tp.append(hit)
        per_class[name] = average_precision(tp, count, interpolation)
        n_gt[name] = count
    valid = [v for v in per_class.values() if not np.isnan(v)]
    return {"per_class": per_class, "mAP": float(np.mean(valid)) if valid else float("nan"),
            "n_gt": n_gt, "iou_threshold": float(iou_threshold), "interpolation": interpolation}
