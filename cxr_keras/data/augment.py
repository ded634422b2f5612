"""Per-paper augmentation presets as stateless, seeded TensorFlow ops (TF-specific module).

Each element is augmented with random numbers drawn from ``tf.random.stateless_*`` with a seed made
of the pipeline seed and the element's running number, so the same seed gives the same batches,
whatever the parallelism. Image, mask and boxes go through the same geometric transform.

Presets (training; evaluation applies only the deterministic part, e.g. the centre crop):

- ``fzlpr``: horizontal flip, rotation +-0.4 rad, random crop 224 of 256 (= 0.875 of the side).
- ``mlrfnet``: random crop 224 of 256, flip p=0.5, rotation +-5 degrees, contrast / saturation in
  [0.9, 1.1] and hue +-0.1 (saturation and hue leave grey images unchanged; kept for fidelity).
- ``dual_mae_pretrain``: random resized crop, scale 0.5-1.0, ratio 3/4-4/3, flip.
- ``dual_mae_finetune``: random resized crop 0.08-1 (MAE's fine-tuning default), flip, RandAugment
  (2 ops, magnitude 6 of 10) from Keras; evaluation: centre crop 0.875.
- ``mtpret``: no crop, blur or colour jitter (the paper removes them); flip, rotation +-10 degrees,
  translation +-5%, scale 0.9-1.1 (our CHOICE for what remains of MoCo v2's set).
- ``none``: nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Preset:
    flip: bool = False
    rotation: float = 0.0          # max absolute angle, radians
    translate: float = 0.0         # max shift, fraction of the side
    scale: tuple = (1.0, 1.0)      # zoom range of the affine transform
    crop: float = 1.0              # random crop side as a fraction (eval: centre crop)
    resized_crop: tuple | None = None  # (min_scale, max_scale) of a random resized crop
    contrast: tuple | None = None
    saturation: tuple | None = None
    hue: float = 0.0
    randaugment: float = 0.0       # RandAugment magnitude out of 10 (0 = off)


PRESETS = {
    "none": Preset(),
    "fzlpr": Preset(flip=True, rotation=0.4, crop=224 / 256),
    "mlrfnet": Preset(flip=True, rotation=math.radians(5), crop=224 / 256, contrast=(0.9, 1.1),
                      saturation=(0.9, 1.1), hue=0.1),
    "dual_mae_pretrain": Preset(flip=True, resized_crop=(0.5, 1.0)),
    "dual_mae_finetune": Preset(flip=True, resized_crop=(0.08, 1.0), randaugment=6.0, crop=224 / 256),
    # multiloss U-Net (Sec. 2.2.1): shifts of +-2 pixels (of a 256 side; the recipe rescales
    # to its input size), horizontal flip, rotations of +-5 degrees
    "multiloss": Preset(flip=True, rotation=math.radians(5), translate=2 / 256),
    "mtpret": Preset(flip=True, rotation=math.radians(10), translate=0.05, scale=(0.9, 1.1)),
}


def get_preset(preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset]


def eval_preset(preset: Preset) -> Preset:
    """The deterministic part of a preset, for validation and test: only the centre crop."""
    return Preset(crop=preset.crop)


def _uniform(seed, i, lo, hi):
    return tf.random.stateless_uniform([], seed=seed + tf.constant([0, 7919], tf.int64) * i,
                                       minval=lo, maxval=hi)


def _affine_matrix(angle, tx, ty, zoom, flip, size_hw):
    """3x3 matrix mapping INPUT pixel coordinates (x, y, 1) to OUTPUT coordinates."""
    h, w = tf.cast(size_hw[0], tf.float32), tf.cast(size_hw[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    c, s = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    fx = tf.where(flip, -1.0, 1.0)
    # out = R*S*(F*(p - centre)) + centre + t
    row0 = tf.stack([c * fx, -s, cx - c * fx * cx + s * cy + tx * w])
    row1 = tf.stack([s * fx, c, cy - s * fx * cx - c * cy + ty * h])
    return tf.stack([row0, row1, tf.constant([0.0, 0.0, 1.0])])


def _warp(image, forward, interpolation, fill=0.0):
    inv = tf.linalg.inv(forward)  # projective transform ops want output -> input
    t = tf.reshape(inv, [9])[:8] / inv[2, 2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=t[None], output_shape=tf.shape(image)[:2],
        interpolation=interpolation, fill_mode="CONSTANT", fill_value=fill)
    return out[0]


def _transform_boxes(boxes, forward, hw):
    """Boxes (N, 5) [x, y, w, h, cls] with padding rows cls < 0; returns enclosing boxes, clipped."""
    x0, y0, bw, bh, cls = tf.unstack(boxes, axis=-1)
    xs = tf.stack([x0, x0 + bw, x0, x0 + bw], axis=-1)
    ys = tf.stack([y0, y0, y0 + bh, y0 + bh], axis=-1)
    nx = forward[0, 0] * xs + forward[0, 1] * ys + forward[0, 2]
    ny = forward[1, 0] * xs + forward[1, 1] * ys + forward[1, 2]
    w, h = tf.cast(hw[1], tf.float32), tf.cast(hw[0], tf.float32)
    x1 = tf.clip_by_value(tf.reduce_min(nx, -1), 0.0, w)
    y1 = tf.clip_by_value(tf.reduce_min(ny, -1), 0.0, h)
    x2 = tf.clip_by_value(tf.reduce_max(nx, -1), 0.0, w)
    y2 = tf.clip_by_value(tf.reduce_max(ny, -1), 0.0, h)
    keep = (cls >= 0) & (x2 - x1 > 1.0) & (y2 - y1 > 1.0)
    out = tf.stack([x1, y1, x2 - x1, y2 - y1, cls], axis=-1)
    return tf.where(keep[:, None], out, tf.constant([0.0, 0.0, 0.0, 0.0, -1.0]))


def _crop(image, mask, boxes, oy, ox, ch, cw):
    image = image[oy:oy + ch, ox:ox + cw]
    if mask is not None:
        mask = mask[oy:oy + ch, ox:ox + cw]
    if boxes is not None:
        fx, fy = -tf.cast(ox, tf.float32), -tf.cast(oy, tf.float32)
        forward = tf.stack([tf.stack([1.0, 0.0, fx]), tf.stack([0.0, 1.0, fy]),
                            tf.constant([0.0, 0.0, 1.0])])
        boxes = _transform_boxes(boxes, forward, [ch, cw])
    return image, mask, boxes


def _resize(image, mask, boxes, hw_out):
    hw_in = tf.shape(image)[:2]
    image = tf.image.resize(image, hw_out, method="bilinear")
    if mask is not None:
        mask = tf.image.resize(mask, hw_out, method="nearest")
    if boxes is not None:
        sx = tf.cast(hw_out[1], tf.float32) / tf.cast(hw_in[1], tf.float32)
        sy = tf.cast(hw_out[0], tf.float32) / tf.cast(hw_in[0], tf.float32)
        valid = boxes[:, 4:5] >= 0
        scaled = boxes * tf.stack([sx, sy, sx, sy, 1.0])
        boxes = tf.where(valid, scaled, boxes)
    return image, mask, boxes


def apply(preset: Preset, image, seed, *, mask=None, boxes=None, training: bool = True):
    """Augment one element. ``image`` (H, W, C) float32 on 0-255; ``mask`` (H, W, 1); ``boxes``
    (N, 5) float32 in pixels of ``image`` with padding rows of class -1; ``seed`` int64 (2,)."""
    if not training:
        preset = eval_preset(preset)
    hw = tf.shape(image)[:2]
    if preset.resized_crop is not None and training:
        area = tf.cast(hw[0] * hw[1], tf.float32)
        frac = _uniform(seed, 1, *preset.resized_crop)
        logr = _uniform(seed, 2, math.log(3 / 4), math.log(4 / 3))
        ratio = tf.exp(logr)
        cw = tf.cast(tf.minimum(tf.round(tf.sqrt(area * frac * ratio)), tf.cast(hw[1], tf.float32)), tf.int32)
        ch = tf.cast(tf.minimum(tf.round(tf.sqrt(area * frac / ratio)), tf.cast(hw[0], tf.float32)), tf.int32)
        oy = tf.cast(_uniform(seed, 3, 0.0, 1.0) * tf.cast(hw[0] - ch + 1, tf.float32), tf.int32)
        ox = tf.cast(_uniform(seed, 4, 0.0, 1.0) * tf.cast(hw[1] - cw + 1, tf.float32), tf.int32)
        oy, ox = tf.minimum(oy, hw[0] - ch), tf.minimum(ox, hw[1] - cw)
        image, mask, boxes = _crop(image, mask, boxes, oy, ox, ch, cw)
        out_hw = tf.cast(tf.round(tf.cast(hw, tf.float32) * preset.crop), tf.int32)
        image, mask, boxes = _resize(image, mask, boxes, out_hw)
        hw = out_hw
    if training and (preset.flip or preset.rotation or preset.translate or preset.scale != (1.0, 1.0)):
        flip = _uniform(seed, 5, 0.0, 1.0) < 0.5 if preset.flip else tf.constant(False)
        angle = _uniform(seed, 6, -preset.rotation, preset.rotation) if preset.rotation else 0.0
        tx = _uniform(seed, 7, -preset.translate, preset.translate) if preset.translate else 0.0
        ty = _uniform(seed, 8, -preset.translate, preset.translate) if preset.translate else 0.0
        zoom = _uniform(seed, 9, *preset.scale) if preset.scale != (1.0, 1.0) else 1.0
        forward = _affine_matrix(tf.cast(angle, tf.float32), tf.cast(tx, tf.float32),
                                 tf.cast(ty, tf.float32), tf.cast(zoom, tf.float32), flip, hw)
        image = _warp(image, forward, "BILINEAR")
        if mask is not None:
            mask = _warp(mask, forward, "NEAREST")
        if boxes is not None:
            boxes = _transform_boxes(boxes, forward, hw)
    if preset.crop < 1.0 and preset.resized_crop is None:
        ch = tf.cast(tf.round(tf.cast(hw[0], tf.float32) * preset.crop), tf.int32)
        cw = tf.cast(tf.round(tf.cast(hw[1], tf.float32) * preset.crop), tf.int32)
        if training:
            oy = tf.cast(_uniform(seed, 10, 0.0, 1.0) * tf.cast(hw[0] - ch + 1, tf.float32), tf.int32)
            ox = tf.cast(_uniform(seed, 11, 0.0, 1.0) * tf.cast(hw[1] - cw + 1, tf.float32), tf.int32)
            oy, ox = tf.minimum(oy, hw[0] - ch), tf.minimum(ox, hw[1] - cw)
        else:
            oy, ox = (hw[0] - ch) // 2, (hw[1] - cw) // 2
        image, mask, boxes = _crop(image, mask, boxes, oy, ox, ch, cw)
    if training and preset.contrast is not None:
        image = tf.image.adjust_contrast(image, _uniform(seed, 12, *preset.contrast))
    if training and (preset.saturation is not None or preset.hue) and image.shape[-1] == 3:
        if preset.saturation is not None:
            image = tf.image.adjust_saturation(image, _uniform(seed, 13, *preset.saturation))
        if preset.hue:
            image = tf.image.adjust_hue(image / 255.0, _uniform(seed, 14, -preset.hue, preset.hue)) * 255.0
    image = tf.clip_by_value(image, 0.0, 255.0)
    return image, mask, boxes

