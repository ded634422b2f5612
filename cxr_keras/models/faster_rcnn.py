"""Faster R-CNN (Ren et al., NeurIPS 2015), mtpret's detection head, in ``keras.ops``.

On one feature map of the shared backbone (default C4, stride 16):

- RPN: 3x3 convolution + ReLU, then per anchor an objectness logit and four box deltas
  (:mod:`cxr_keras.models.anchors`: anchors, coding, targets).
- Proposals: the RPN boxes decoded on their anchors, clipped to the image, the ``proposals``
  best by objectness (no gradient). In training the ground-truth boxes are appended (as the
  reference implementations do).
- RoI head: :func:`~cxr_keras.layers.roi_align.roi_align` (7 x 7, 2 x 2 samples per bin), two
  fully connected layers with ReLU, then class logits (background + classes) and class-specific
  box deltas (weights 10, 10, 5, 5).

Training targets: the RPN's come with the data (:func:`rpn_targets`, fixed anchors for a fixed
input size: IoU >= 0.7 positive, < 0.3 negative, 256 sampled per image, half positive at most);
the RoI head's are assigned in the graph (IoU >= 0.5 with a box: its class, else background).
Losses (the paper's detection loss, for both stages): classification (binary cross-entropy for the
RPN, softmax cross-entropy for the RoI head) + smooth L1 on the positive boxes only, each
normalised by the number of sampled anchors / RoIs.

``model.fit(x={"image", "gt_boxes", "gt_labels", "rpn_labels", "rpn_targets"})`` (no y: the
loss terms are computed in ``call`` when the targets are given, and logged) on any backend;
:meth:`FasterRCNN.detect` gives boxes, scores and labels per image (per-class NMS in NumPy) for
:func:`cxr_keras.evaluation.detection.detection_ap`.

CHOICES (simplifications of the reference code, for one CPU-sized feature map): no NMS among the
proposals (the best ``proposals`` by objectness are kept, in training and at test time) and no
positive / negative sampling of RoIs (all proposals count).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ..layers.roi_align import roi_align
from ._loss_terms_model import LossTermsModel
from .anchors import assign_targets, decode, generate_anchors, nms, smooth_l1

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def box_iou_ops(a, b):
    """(..., N, M) IoU of boxes ``a`` (..., N, 4) and ``b`` (..., M, 4), keras.ops."""
    lt = ops.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = ops.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = ops.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / ops.maximum(union, 1e-9)


def encode_ops(anchors, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """keras.ops twin of :func:`cxr_keras.models.anchors.encode` (boxes of zero size give 0)."""
    aw = ops.maximum(anchors[..., 2] - anchors[..., 0], 1e-6)
    ah = ops.maximum(anchors[..., 3] - anchors[..., 1], 1e-6)
    bw = ops.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    bh = ops.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    dx = (boxes[..., 0] + 0.5 * bw - anchors[..., 0] - 0.5 * aw) / aw
    dy = (boxes[..., 1] + 0.5 * bh - anchors[..., 1] - 0.5 * ah) / ah
    return ops.stack([weights[0] * dx, weights[1] * dy, weights[2] * ops.log(bw / aw),
                      weights[3] * ops.log(bh / ah)], axis=-1)


def rpn_targets(anchors, gt_boxes, image_size, rng=None, **kwargs):
    """RPN labels (N,) and targets (N, 4) of one image; anchors crossing the image border are
    ignored, as in the paper's training."""
    a = np.asarray(anchors)
    h, w = image_size
    inside = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= w) & (a[:, 3] <= h)
    labels, targets, _ = assign_targets(a, gt_boxes, rng=rng, valid=inside, **kwargs)
    return labels.astype("float32"), targets


@keras.saving.register_keras_serializable(package="cxr_keras")
class FasterRCNN(LossTermsModel):
    """See the module docstring. ``backbone``: image -> [C2, C3, C4, C5] (any list of maps);
    ``level``: which map (default 2, C4) with its ``stride``."""

    def __init__(self, backbone, num_classes, level=2, stride=16, anchor_sizes=(32, 64, 128),
                 anchor_ratios=(0.5, 1.0, 2.0), rpn_channels=256, proposals=64, roi_size=7,
                 head_units=256, positive_iou=0.5, **kwargs):
        kwargs.setdefault("name", "faster_rcnn")
        super().__init__(**kwargs)
        self.backbone, self.num_classes, self.level = backbone, int(num_classes), int(level)
        self.stride, self.proposals, self.roi_size = int(stride), int(proposals), int(roi_size)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
        self.rpn_channels, self.head_units = int(rpn_channels), int(head_units)
        self.positive_iou = float(positive_iou)
        self.image_size = tuple(int(s) for s in backbone.input.shape[1:3])
        fmap = backbone.outputs[self.level].shape
        if fmap[1] * self.stride != self.image_size[0] or fmap[2] * self.stride != self.image_size[1]:
            raise ValueError(f"feature map {fmap[1]}x{fmap[2]} x stride {self.stride} is not the "
                             f"image size {self.image_size}")
        self.anchors = generate_anchors(fmap[1:3], self.stride, self.anchor_sizes,
                                        self.anchor_ratios)
        a = len(self.anchor_sizes) * len(self.anchor_ratios)
        self.num_anchors = a
        self.rpn_conv = layers.Conv2D(self.rpn_channels, 3, padding="same", activation="relu",
                                      name="rpn_conv")
        self.rpn_cls = layers.Conv2D(a, 1, name="rpn_objectness")
        self.rpn_box = layers.Conv2D(4 * a, 1, name="rpn_deltas",
                                     kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.fc1 = layers.Dense(self.head_units, activation="relu", name="box_fc1")
        self.fc2 = layers.Dense(self.head_units, activation="relu", name="box_fc2")
        self.cls_score = layers.Dense(self.num_classes + 1, name="cls_score",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bbox_pred = layers.Dense(4 * self.num_classes, name="bbox_pred",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))
        self.loss_trackers = {k: keras.metrics.Mean(name=k) for k in
                              ("rpn_cls", "rpn_box", "roi_cls", "roi_box")}

    # ------------------------------------------------------------------------------- forward
    def _rpn(self, features):
        t = self.rpn_conv(features)
        b = ops.shape(t)[0]
        obj = ops.reshape(self.rpn_cls(t), (b, -1))
        deltas = ops.reshape(self.rpn_box(t), (b, -1, 4))
        return obj, deltas

    def _proposals(self, obj, deltas):
        boxes = decode(ops.convert_to_tensor(self.anchors)[None], deltas)
        h, w = self.image_size
        boxes = ops.stack([ops.clip(boxes[..., 0], 0, w), ops.clip(boxes[..., 1], 0, h),
                           ops.clip(boxes[..., 2], 0, w), ops.clip(boxes[..., 3], 0, h)], -1)
        k = min(self.proposals, len(self.anchors))
        scores, idx = ops.top_k(ops.stop_gradient(obj), k)
        picked = ops.take_along_axis(ops.stop_gradient(boxes), idx[..., None], axis=1)
        return picked, scores

    def _roi_head(self, features, rois):
        pooled = roi_align(features, rois, self.roi_size, 1.0 / self.stride, 2, True)
        b, r = ops.shape(pooled)[0], ops.shape(pooled)[1]
        x = ops.reshape(pooled, (b, r, self.roi_size * self.roi_size * int(features.shape[-1])))
        x = self.fc2(self.fc1(x))
        return self.cls_score(x), ops.reshape(self.bbox_pred(x), (b, r, self.num_classes, 4))

    def call(self, inputs, training=False):
        image = inputs["image"] if isinstance(inputs, dict) else inputs
        features = self.backbone(image, training=training)[self.level]
        obj, deltas = self._rpn(features)
        rois, _ = self._proposals(obj, deltas)
        targets = isinstance(inputs, dict) and "gt_boxes" in inputs
        if targets:
            rois = ops.concatenate([rois, ops.cast(inputs["gt_boxes"], rois.dtype)], axis=1)
        cls_logits, box_deltas = self._roi_head(features, rois)
        out = {"rpn_objectness": obj, "rpn_deltas": deltas, "rois": rois,
               "cls_logits": cls_logits, "box_deltas": box_deltas}
        if targets:
            out.update(self.loss_terms(inputs, out))
        return out

    # ---------------------------------------------------------------------------------- loss
    def roi_targets(self, rois, gt_boxes, gt_labels):
        """(labels (B, R) with 0 = background, regression targets (B, R, 4), positive mask)."""
        gt_boxes = ops.cast(gt_boxes, "float32")
        valid = ops.cast(gt_labels, "int32") >= 0
        iou = box_iou_ops(rois, gt_boxes)
        iou = ops.where(valid[:, None, :], iou, -1.0)
        best = ops.max(iou, axis=-1)
        j = ops.argmax(iou, axis=-1)
        positive = best >= self.positive_iou
        matched_labels = ops.take_along_axis(ops.cast(gt_labels, "int32"), j, axis=1)
        labels = ops.where(positive, matched_labels + 1, 0)
        matched_boxes = ops.take_along_axis(gt_boxes, j[..., None], axis=1)
        targets = encode_ops(rois, matched_boxes, BOX_WEIGHTS)
        return labels, ops.stop_gradient(targets), positive

    def loss_terms(self, x, out):
        """The four loss terms and their sum ("total")."""
        rpn_labels = ops.cast(x["rpn_labels"], "float32")
        sampled = ops.cast(rpn_labels >= 0, "float32")
        pos = ops.cast(rpn_labels > 0, "float32")
        n_sampled = ops.maximum(ops.sum(sampled), 1.0)
        obj = ops.cast(out["rpn_objectness"], "float32")
        bce = ops.maximum(obj, 0) - obj * pos + ops.log1p(ops.exp(-ops.abs(obj)))
        rpn_cls = ops.sum(bce * sampled) / n_sampled
        rpn_box = ops.sum(smooth_l1(x["rpn_targets"], out["rpn_deltas"]) * pos) / n_sampled
        labels, targets, positive = self.roi_targets(out["rois"], x["gt_boxes"], x["gt_labels"])
        logits = ops.cast(out["cls_logits"], "float32")
        roi_cls = ops.mean(ops.logsumexp(logits, axis=-1)
                           - ops.take_along_axis(logits, labels[..., None], axis=-1)[..., 0])
        cls_index = ops.maximum(labels - 1, 0)
        deltas = ops.take_along_axis(ops.cast(out["box_deltas"], "float32"),
                                     cls_index[..., None, None], axis=2)[:, :, 0]
        posf = ops.cast(positive, "float32")
        roi_box = ops.sum(smooth_l1(targets, deltas, beta=1.0) * posf) / ops.cast(
            ops.size(posf), "float32")
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box,
                "total": rpn_cls + rpn_box + roi_cls + roi_box}

    # ----------------------------------------------------------------------------- inference
    def detect(self, images, score_threshold=0.05, iou_threshold=0.5, max_detections=100,
               batch_size=8):
        """Per image ``{"boxes", "scores", "labels"}`` (NumPy), labels 0-based."""
        out = []
        for start in range(0, len(images), batch_size):
            pred = self(np.asarray(images[start:start + batch_size]), training=False)
            rois = np.asarray(pred["rois"])
            probs = np.asarray(ops.softmax(pred["cls_logits"], axis=-1))
            deltas = np.asarray(pred["box_deltas"])
            h, w = self.image_size
            for i in range(len(rois)):
                boxes, scores, labels = [], [], []
                for c in range(self.num_classes):
                    b = np.asarray(decode(rois[i], deltas[i, :, c], BOX_WEIGHTS))
                    b = np.clip(b, 0, [w, h, w, h])
                    s = probs[i, :, c + 1]
                    keep = (s > score_threshold) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
                    b, s = b[keep], s[keep]
                    k = nms(b, s, iou_threshold)
                    boxes.append(b[k])
                    scores.append(s[k])
                    labels.append(np.full(len(k), c))
                boxes, scores, labels = (np.concatenate(v) for v in (boxes, scores, labels))
                top = np.argsort(-scores, kind="stable")[:max_detections]
                out.append({"boxes": boxes[top].reshape(-1, 4), "scores": scores[top],
                            "labels": labels[top]})
        return out

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "level": self.level,
                "stride": self.stride, "anchor_sizes": list(self.anchor_sizes),
                "anchor_ratios": list(self.anchor_ratios), "rpn_channels": self.rpn_channels,
                "proposals": self.proposals, "roi_size": self.roi_size,
                "head_units": self.head_units, "positive_iou": self.positive_iou,
                "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
