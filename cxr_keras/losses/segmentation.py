"""Lung segmentation losses of the multi-loss paper (SPEC section 2 ``multiloss``; sec. 2.2.1).

Paper: Rajaraman et al., "Multi-loss ensemble deep learning for chest X-ray classification".

Every loss here takes **sigmoid probabilities** ``p = y_pred`` in [0, 1] and binary lung masks
``y = y_true`` of the same shape, ``(B, H, W, 1)`` (any rank >= 2 with the batch first works).
The classes defined here return one value per image from ``call``, shape ``(B,)`` (keras' BCE /
focal: one per pixel, ``(B, H, W)``); the default reduction averages them.

* ``"bce"``  -- eq. (1): ``keras.losses.BinaryCrossentropy`` (mean over all pixels of the batch).
* ``"focal"`` -- eq. (7): ``keras.losses.BinaryFocalCrossentropy`` with gamma = 1 (paper) and
  ``alpha_t`` = 0.25 on lung pixels, 0.75 on background (paper silent; Lin et al.'s and
  segmentation_models' ``BinaryFocalLoss`` default).
* ``"bce_dice"`` -- eq. (6): 0.5 * BCE + 0.5 * Dice loss (eq. 5, +1 smoothing),
  :class:`BCEDiceLoss`.
* ``"tversky"`` -- eq. (8): 1 - TI of the lung class, 0.7 on false negatives and 0.3 on false
  positives (SPEC CHOICE), :class:`TverskyLoss`.
* ``"focal_tversky"`` -- eq. (9): sum over lung and background of (1 - TI_c)^(1/gamma),
  gamma = 4/3, :class:`FocalTverskyLoss`.

Sums of the overlap losses (Dice, Tversky) run over the **whole mini-batch** by default
(``per_image=False``: one pooled ratio per batch, as ``K.flatten``-style reference code and
segmentation_models' default ``per_image=False`` do; the paper: "computed for every mini-batch");
``per_image=True`` gives one ratio per image instead. The batch value is repeated for each image so
that the mean reduction returns it unchanged.

Why not keras' own ``Dice`` / ``Tversky``: both have no +1 smoothing (only 1e-7 in the
denominator), and keras' ``tversky`` names its FN sum ``fp`` (its ``alpha`` in fact weights false
negatives, contrary to its docstring); the overlap sums are written out here so that the FN/FP
weighting is explicit.
"""

from __future__ import annotations

import keras
from keras import ops

# Floor of (1 - TI) before the fractional power of eq. (9): d/dx x^(3/4) is infinite at x = 0.
_FT_FLOOR = 1e-7


def _prepare(y_true, y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    return y_true, y_pred


def _sum_axes(y_pred, per_image):
    """Axes of the overlap sums: every non-batch axis (per image) or all axes (pooled batch)."""
    return tuple(range(1, len(y_pred.shape))) if per_image else None


def _per_image(value, y_pred):
    """Broadcast a pooled (scalar) batch value to shape (B,)."""
    if len(value.shape) == 0:
        return value + ops.zeros_like(y_pred[(slice(None),) + (0,) * (len(y_pred.shape) - 1)])
    return value


def _pixel_mean(values):
    """Mean over every non-batch axis: (B, ...) -> (B,)."""
    return ops.mean(values, axis=tuple(range(1, len(values.shape))))


def dice_loss(y_true, y_pred, smooth=1.0, per_image=False):
    """Dice loss, eq. (5): 1 - (2 sum(y p) + s) / (sum y + sum p + s), s = ``smooth`` (paper: 1).

    Returns a scalar (pooled over the batch) or shape ``(B,)`` with ``per_image=True``.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    axis = _sum_axes(y_pred, per_image)
    inter = ops.sum(y_true * y_pred, axis=axis)
    denom = ops.sum(y_true, axis=axis) + ops.sum(y_pred, axis=axis)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def tversky_index(y_true, y_pred, alpha=0.7, beta=0.3, smooth=1.0, per_image=False):
    """Tversky index of the lung class, eq. (8) with the SPEC's FN/FP assignment.

    TI = (TP + s) / (TP + alpha * FN + beta * FP + s), with the soft counts TP = sum(y p),
    FN = sum(y (1 - p)), FP = sum((1 - y) p). ``alpha`` weights **false negatives**.
    The background class is ``tversky_index(1 - y, 1 - p, ...)``.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    axis = _sum_axes(y_pred, per_image)
    tp = ops.sum(y_true * y_pred, axis=axis)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=axis)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=axis)
    return (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)


def focal_tversky_loss(y_true, y_pred, alpha=0.7, beta=0.3, gamma=4.0 / 3.0, smooth=1.0,
                       per_image=False, include_background=True):
    """Focal Tversky loss, eq. (9): sum over c in {lung, background} of (1 - TI_c)^(1/gamma).

    The background term uses 1 - y and 1 - p. (1 - TI) is floored at 1e-7 before the power so
    that the gradient stays finite for a perfect prediction (the power 3/4 has an infinite slope
    at 0). ``include_background=False`` keeps the lung term only (Abraham & Khan's form).
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    inv_gamma = 1.0 / gamma
    kw = dict(alpha=alpha, beta=beta, smooth=smooth, per_image=per_image)

    def term(y, p):
        one_minus = ops.maximum(1.0 - tversky_index(y, p, **kw), _FT_FLOOR)
        return ops.power(one_minus, inv_gamma)

    loss = term(y_true, y_pred)
    if include_background:
        loss = loss + term(1.0 - y_true, 1.0 - y_pred)
    return loss


@keras.saving.register_keras_serializable(package="cxr_keras")
class DiceLoss(keras.losses.Loss):
    """Dice loss with +1 smoothing, eq. (5); pooled over the batch unless ``per_image``;
    ``from_logits``: apply the sigmoid to ``y_pred`` first (mtpret's DeepLab-V3 gives logits)."""

    def __init__(self, smooth=1.0, per_image=False, from_logits=False,
                 reduction="sum_over_batch_size", name="dice_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.smooth = float(smooth)
        self.per_image = bool(per_image)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if self.from_logits:
            y_pred = ops.sigmoid(y_pred)
        return _per_image(dice_loss(y_true, y_pred, self.smooth, self.per_image), y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(smooth=self.smooth, per_image=self.per_image, from_logits=self.from_logits)
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class BCEDiceLoss(keras.losses.Loss):
    """Weighted BCE-Dice loss, eq. (6): ``bce_weight * BCE + dice_weight * Dice`` (paper 0.5, 0.5).

    BCE (eq. 1) is keras' ``binary_crossentropy`` (probabilities clipped to [1e-7, 1 - 1e-7]),
    averaged over pixels; Dice is eq. (5) with ``smooth`` (paper +1), pooled over the batch
    unless ``per_image``. With the mean reduction: 0.5 * mean pixel BCE + 0.5 * batch Dice loss.
    """

    def __init__(self, bce_weight=0.5, dice_weight=0.5, smooth=1.0, per_image=False,
                 reduction="sum_over_batch_size", name="bce_dice_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.per_image = bool(per_image)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        bce = _pixel_mean(keras.losses.binary_crossentropy(y_true, y_pred, axis=-1))
        dice = _per_image(dice_loss(y_true, y_pred, self.smooth, self.per_image), y_pred)
        return self.bce_weight * bce + self.dice_weight * dice

    def get_config(self):
        config = super().get_config()
        config.update(bce_weight=self.bce_weight, dice_weight=self.dice_weight,
                      smooth=self.smooth, per_image=self.per_image)
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class FocalTverskyLoss(keras.losses.Loss):
    """Focal Tversky loss, eq. (9): sum_c (1 - TI_c)^(1/gamma) over lung and background.

    TI_c is eq. (8) with ``alpha`` on false negatives and ``beta`` on false positives (SPEC
    CHOICE 0.7 / 0.3), ``smooth`` added to numerator and denominator (default 1, as in Abraham &
    Khan's reference code; the paper is silent), gamma = 4/3 (paper) i.e. the power 3/4.
    Pooled over the batch unless ``per_image``. ``include_background=False`` drops the background
    term. :class:`TverskyLoss` is the special case gamma = 1, lung only.
    """

    def __init__(self, alpha=0.7, beta=0.3, gamma=4.0 / 3.0, smooth=1.0, per_image=False,
                 include_background=True, reduction="sum_over_batch_size",
                 name="focal_tversky_loss", dtype=None):
        if not float(gamma) > 0:
            raise ValueError(f"{type(self).__name__}: gamma must be > 0, got {gamma!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.smooth = float(smooth)
        self.per_image = bool(per_image)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        loss = focal_tversky_loss(y_true, y_pred, alpha=self.alpha, beta=self.beta,
                                  gamma=self.gamma, smooth=self.smooth, per_image=self.per_image,
                                  include_background=self.include_background)
        return _per_image(loss, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, gamma=self.gamma, smooth=self.smooth,
                      per_image=self.per_image, include_background=self.include_background)
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class TverskyLoss(FocalTverskyLoss):
    """Tversky loss, 1 - TI of the lung class (eq. 8), ``alpha`` on FN, ``beta`` on FP (0.7/0.3).

    ``include_background=True`` adds the background class' 1 - TI (the paper's eq. 8 is written
    per class c; the lung-only form is Salehi et al.'s binary loss and the default here).
    """

    def __init__(self, alpha=0.7, beta=0.3, smooth=1.0, per_image=False,
                 include_background=False, reduction="sum_over_batch_size",
                 name="tversky_loss", dtype=None):
        super().__init__(alpha=alpha, beta=beta, gamma=1.0, smooth=smooth, per_image=per_image,
                         include_background=include_background, reduction=reduction, name=name,
                         dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("gamma")
        return config


def _bce(**kw):
    return keras.losses.BinaryCrossentropy(**{"name": "bce", **kw})


def _focal(**kw):
    defaults = dict(gamma=1.0, alpha=0.25, apply_class_balancing=True, name="focal")
    return keras.losses.BinaryFocalCrossentropy(**{**defaults, **kw})


SEGMENTATION_LOSSES = {
    "bce": _bce,
    "bce_dice": BCEDiceLoss,
    "focal": _focal,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
}


def get_segmentation_loss(name, **kwargs):
    """Segmentation loss by name (a key of :data:`SEGMENTATION_LOSSES`); keywords forwarded."""
    key = str(name).lower()
    if key not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown segmentation loss {name!r}; known: {tuple(SEGMENTATION_LOSSES)}")
    return SEGMENTATION_LOSSES[key](**kwargs)
