"""tf.data glue for :class:`cxr_keras.models.FasterRCNN` (TensorFlow-specific): a batched
``(image, boxes)`` dataset from :func:`cxr_keras.data.pipeline.make_dataset` (``target="boxes"``:
rows ``[x, y, w, h, class]``, class -1 for padding) becomes the model's training dict, with the
RPN targets of each image computed in NumPy (seeded by batch index, so an epoch is reproducible).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..models.faster_rcnn import rpn_targets


def to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[x, y, w, h, ...]`` rows -> ``(x1, y1, x2, y2)``."""
    b = np.asarray(boxes, np.float32)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def faster_rcnn_inputs(ds, model, seed: int = 0):
    """Map batches ``(image, boxes)`` to ``({"image", "gt_boxes", "gt_labels", "rpn_labels",
    "rpn_targets"},)`` for ``model.fit``."""
    anchors, size = model.anchors, model.image_size
    n = len(anchors)

    def targets(boxes, batch_index):
        rng = np.random.default_rng([seed, int(batch_index)])
        labels, regs = [], []
        for b in boxes:
            keep = b[:, 4] >= 0
            lab, reg = rpn_targets(anchors, to_xyxy(b[keep]), size, rng=rng)
            labels.append(lab)
            regs.append(reg)
        return np.stack(labels).astype(np.float32), np.stack(regs).astype(np.float32)

    def convert(i, batch):
        image, boxes = batch
        labels, regs = tf.numpy_function(targets, [boxes, i], [tf.float32, tf.float32])
        labels.set_shape([None, n])
        regs.set_shape([None, n, 4])
        xyxy = tf.concat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], axis=-1)
        return ({"image": image, "gt_boxes": xyxy, "gt_labels": tf.cast(boxes[..., 4], tf.int32),
                 "rpn_labels": labels, "rpn_targets": regs},)

    return ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
