"""Anchors, box coding, training targets and non-maximum suppression for Faster R-CNN (Ren et al.,
NeurIPS 2015), mtpret's detection head. Boxes are ``(x1, y1, x2, y2)`` in input pixels.

- :func:`generate_anchors`: at every cell of a stride-s feature map, one anchor per (size, aspect
  ratio), centred on the cell centre ``((j + 0.5) s, (i + 0.5) s)``; ratio = height / width, area
  = size^2. Order: row, column, then (ratio, size) as listed.
- :func:`encode` / :func:`decode`: (dx, dy, dw, dh) = ((x - xa) / wa, (y - ya) / ha, log(w / wa),
  log(h / ha)) times ``weights`` (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head, as
  Faster R-CNN's reference code; decode clips dw, dh at log(1000 / 16).
- :func:`assign_targets`: an anchor is positive if its IoU with some box is >= ``positive_iou``
  (0.7) or it is a box's best anchor (ties included), negative if its best IoU is < ``negative_iou``
  (0.3), ignored otherwise; then at most ``batch_size`` (256) anchors are kept, up to half
  positive, the rest negative, drawn at random (the paper's RPN sampling). Returns labels (1, 0,
  -1) and the encoded box of every positive.
- :func:`smooth_l1`: Huber loss with transition ``beta`` (1/9 in the RPN reference code), summed
  over the four coordinates.
- :func:`nms`: greedy non-maximum suppression (NumPy).
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from ..evaluation.detection import box_iou

BBOX_CLIP = math.log(1000.0 / 16)


def generate_anchors(feature_hw, stride: int, sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0)):
    """(H * W * len(ratios) * len(sizes), 4) anchors of a stride-``stride`` feature map."""
    h, w = int(feature_hw[0]), int(feature_hw[1])
    base = []
    for r in ratios:
        for s in sizes:
            bw, bh = s / math.sqrt(r), s * math.sqrt(r)
            base.append([-bw / 2, -bh / 2, bw / 2, bh / 2])
    base = np.asarray(base, np.float32)
    cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride,
                         indexing="ij")
    centres = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4).astype(np.float32)
    return (centres + base[None]).reshape(-1, 4)


def _centre_size(b):
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def encode(anchors, boxes, weights=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """Regression targets (N, 4) of ``boxes`` (N, 4) relative to ``anchors`` (N, 4)."""
    ax, ay, aw, ah = _centre_size(np.asarray(anchors, np.float64))
    bx, by, bw, bh = _centre_size(np.asarray(boxes, np.float64))
    wx, wy, ww, wh = weights
    return np.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * np.log(bw / aw),
                     wh * np.log(bh / ah)], axis=-1).astype(np.float32)


def decode(anchors, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
    """Boxes from ``deltas`` (..., 4) on ``anchors`` (..., 4), in ``keras.ops`` (any backend)."""
    anchors = ops.cast(anchors, "float32")
    deltas = ops.cast(deltas, "float32")
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    wx, wy, ww, wh = weights
    x = deltas[..., 0] / wx * aw + ax
    y = deltas[..., 1] / wy * ah + ay
    w = ops.exp(ops.minimum(deltas[..., 2] / ww, BBOX_CLIP)) * aw
    h = ops.exp(ops.minimum(deltas[..., 3] / wh, BBOX_CLIP)) * ah
    return ops.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], axis=-1)


def assign_targets(anchors, gt_boxes, positive_iou=0.7, negative_iou=0.3, batch_size=256,
                   positive_fraction=0.5, weights=(1.0, 1.0, 1.0, 1.0), rng=None, valid=None):
    """``(labels (N,) int8 in {1, 0, -1}, targets (N, 4), matched box index (N,))`` for one image.

    ``valid``: optional (N,) bool, anchors allowed at all (e.g. inside the image); others are -1.
    ``rng``: a NumPy Generator for the sampling (seeded for reproducible targets).
    """
    anchors = np.asarray(anchors, np.float32)
    gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    n = len(anchors)
    labels = np.full(n, -1, np.int8)
    targets = np.zeros((n, 4), np.float32)
    matched = np.full(n, -1, np.int64)
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if len(gt) == 0:
        labels[ok] = 0
    else:
        iou = box_iou(anchors, gt)
        iou[~ok] = -1.0
        best = iou.max(axis=1)
        matched = iou.argmax(axis=1)
        labels[ok & (best < negative_iou)] = 0
        labels[ok & (best >= positive_iou)] = 1
        best_per_box = iou.max(axis=0)
        for j in range(len(gt)):  # each box's best anchors, ties included
            if best_per_box[j] > 0:
                hit = np.flatnonzero(iou[:, j] == best_per_box[j])
                labels[hit] = 1
                matched[hit] = j
        pos = labels == 1
        targets[pos] = encode(anchors[pos], gt[matched[pos]], weights)
        matched[~pos] = -1
    rng = np.random.default_rng(0) if rng is None else rng
    pos_idx, neg_idx = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = min(len(pos_idx), int(batch_size * positive_fraction))
    if len(pos_idx) > n_pos:
        labels[rng.choice(pos_idx, len(pos_idx) - n_pos, replace=False)] = -1
    n_neg = min(len(neg_idx), batch_size - n_pos)
    if len(neg_idx) > n_neg:
        labels[rng.choice(neg_idx, len(neg_idx) - n_neg, replace=False)] = -1
    targets[labels != 1] = 0.0
    matched[labels != 1] = -1
    return labels, targets, matched


def smooth_l1(y_true, y_pred, beta: float = 1.0 / 9):
    """Sum over the last axis of the Huber loss with transition ``beta`` (keras.ops)."""
    d = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    per = ops.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return ops.sum(per, axis=-1)


def nms(boxes, scores, iou_threshold: float = 0.5, max_output: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, in decreasing score (ties: input order)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if max_output is not None and len(keep) >= max_output:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i][None], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, np.int64)
