"""Biased focal loss (BFL) of MLRFNet.

Paper: Li et al., "MLRFNet", IEEE Access 2023, Sec. III-D, eqs. (3)-(4), with p = sigmoid(P_sum):

    BFL = -alpha (1 - p)^beta y log p - (1 - alpha) (p^s)^beta (1 - y) log(1 - p),
    p^s = max(p - s, 0),

alpha = 0.4 and s = 0.2 in the paper. Targets follow :mod:`cxr_keras.losses.ranking`: NaN means
"ignore this label" (no loss, no gradient).
"""

from __future__ import annotations

import keras
from keras import ops

from .ranking import rows_for_valid_mean


def _safe_pow(base, exponent):
    """``base ** exponent`` for ``base >= 0`` with a zero value and gradient where ``base == 0``.

    Avoids ``0 ** (beta - 1) = inf`` in the gradient (then ``inf * 0 = NaN``) for beta < 1.
    """
    positive = base > 0
    safe = ops.where(positive, base, ops.ones_like(base))
    return ops.where(positive, ops.power(safe, exponent), ops.zeros_like(base))


def biased_focal_loss(y_true, y_pred, alpha=0.4, beta=2.0, shift=0.2, from_logits=True):
    """Elementwise biased focal loss, paper eqs. (3)-(4); same shape as ``y_pred``.

    With ``from_logits=True`` (default) ``log p`` and ``log(1 - p)`` are log-sigmoids of the logit
    (finite, with finite gradients, for any logit); with ``from_logits=False`` ``y_pred`` is a
    probability clipped to ``[eps, 1 - eps]`` (``keras.config.epsilon()``). Entries whose target
    is NaN are ignored: their loss is 0 and carries no gradient.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    valid = ops.logical_not(ops.isnan(y_true))
    y = ops.where(valid, y_true, ops.zeros_like(y_true))
    if from_logits:
        p = ops.sigmoid(y_pred)
        one_minus_p = ops.sigmoid(-y_pred)       # exact 1 - p, no cancellation for large logits
        log_p = ops.log_sigmoid(y_pred)
        log_one_minus_p = ops.log_sigmoid(-y_pred)
    else:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        one_minus_p = 1.0 - p
        log_p = ops.log(p)
        log_one_minus_p = ops.log(one_minus_p)
    shifted = ops.maximum(p - shift, 0.0)        # eq. (4): p^s = max(p - s, 0)
    pos = -alpha * _safe_pow(one_minus_p, beta) * y * log_p
    neg = -(1.0 - alpha) * _safe_pow(shifted, beta) * (1.0 - y) * log_one_minus_p
    return ops.where(valid, pos + neg, ops.zeros_like(y_pred))


@keras.saving.register_keras_serializable(package="cxr_keras")
class BiasedFocalLoss(keras.losses.Loss):
    """Biased focal loss, paper eqs. (3)-(4), on logits (default) or probabilities.

    ``alpha`` weights positives (``1 - alpha`` negatives; paper 0.4). ``shift`` is the probability
    shift s of eq. (4) (paper 0.2): negatives with p <= s give no loss. ``beta`` is the focusing
    exponent; the paper does not give its value: the default 2.0 is the focal-loss default (an
    unofficial PyTorch port uses 1). With ``shift=0`` and ``alpha=0.5`` BFL is half the plain
    binary focal loss with gamma = beta.

    NaN targets are ignored and, with the default reduction, the value is the **mean over the
    valid entries of the batch**, exactly as :class:`~cxr_keras.losses.MaskedBinaryLoss`: the
    per-sample value returned by ``call`` is the row's sum of valid losses divided by (number of
    valid entries in the batch / batch size). A batch with no valid entry gives 0.
    """

    def __init__(self, alpha=0.4, beta=2.0, shift=0.2, from_logits=True,
                 reduction="sum_over_batch_size", name="biased_focal_loss", dtype=None):
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"BiasedFocalLoss: alpha must be in [0, 1], got {alpha!r}")
        if not float(beta) >= 0.0:
            raise ValueError(f"BiasedFocalLoss: beta must be >= 0, got {beta!r}")
        if not 0.0 <= float(shift) < 1.0:
            raise ValueError(f"BiasedFocalLoss: shift must be in [0, 1), got {shift!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.shift = float(shift)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        valid = ops.logical_not(ops.isnan(y_true))
        elem = biased_focal_loss(y_true, y_pred, alpha=self.alpha, beta=self.beta,
                                 shift=self.shift, from_logits=self.from_logits)
        return rows_for_valid_mean(elem, valid)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, shift=self.shift,
                      from_logits=self.from_logits)
        return config
