"""Ranking losses for multi-label classification: ZLPR and focal ZLPR (FZLPR), plus masked BCE/focal.

Paper: Hanif et al., "Enhancing Multi-Label Chest X-Ray Classification Using an Improved Ranking
Loss", Bioengineering 2025 (SPEC section 1, ``fzlpr``).

All losses take **logits** ``s`` (label scores, shape ``(..., C)``) and multi-hot targets ``y``
of the same shape. Target conventions shared by every loss here:

* ``y >= 0.5`` is a positive label, ``y < 0.5`` a negative one;
* ``y = NaN`` means "ignore this label" (uncertain or absent, as the dataset readers write it):
  the entry is neither positive nor negative and contributes nothing to the loss or its gradient.
"""

from __future__ import annotations

import keras
from keras import ops

# Logit given to masked entries of the log-sum-exp. Applied with ``ops.where`` BEFORE any exp, so
# masked entries give exp(-1e30 - max) == 0 exactly and a zero gradient (never inf * 0).
_MASKED = -1e30


def _label_masks(y_true):
    """Return boolean (positive, negative) masks; NaN targets are in neither."""
    valid = ops.logical_not(ops.isnan(y_true))
    pos = ops.logical_and(valid, y_true >= 0.5)
    neg = ops.logical_and(valid, y_true < 0.5)
    return pos, neg


def _zero_bounded_lse(values, mask):
    """log(1 + sum_{mask} exp(values)) over the last axis as a masked log-sum-exp over [0, values].

    A zero logit is prepended (the "1" inside the log); masked entries are set to a very negative
    number before the exponential, so an empty mask gives log(1) = 0. Stable for |values| ~ 1e4.
    """
    masked = ops.where(mask, values, ops.full_like(values, _MASKED))
    zeros = ops.zeros_like(masked[..., :1])
    return ops.logsumexp(ops.concatenate([zeros, masked], axis=-1), axis=-1)


def fzlpr(y_true, y_pred, tau=0.2):
    """Per-sample focal ZLPR, paper eq. (5); ``tau = 1`` gives ZLPR, eq. (4).

    FZLPR = log(1 + sum_{i in pos} exp(-s_i / tau)) + log(1 + sum_{j in neg} exp(s_j / tau)).
    Returns shape ``y_pred.shape[:-1]``. NaN targets are ignored (see module docstring).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    s = y_pred / ops.cast(tau, y_pred.dtype)
    pos, neg = _label_masks(y_true)
    return _zero_bounded_lse(-s, pos) + _zero_bounded_lse(s, neg)


@keras.saving.register_keras_serializable(package="cxr_keras")
class FZLPR(keras.losses.Loss):
    """Focal ZLPR loss (paper eq. 5) on logits and multi-hot targets.

    ``tau`` is the temperature dividing the label scores (paper default 0.2; ``tau = 1`` is
    exactly ZLPR, eq. 4). Computed as a masked log-sum-exp over [0, scores], so it is finite, with
    finite gradients, for |s| / tau up to at least 1e4, for rows with no positive label (that term
    is log 1 = 0, e.g. "No Finding") and rows with no negative label. Targets equal to NaN are
    ignored (neither positive nor negative). The decision threshold of the loss is s = 0.
    Default reduction: mean over the batch (``"sum_over_batch_size"``).
    """

    def __init__(self, tau=0.2, reduction="sum_over_batch_size", name="fzlpr", dtype=None):
        if not float(tau) > 0:
            raise ValueError(f"FZLPR: tau must be > 0, got {tau!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.tau = float(tau)

    def call(self, y_true, y_pred):
        return fzlpr(y_true, y_pred, tau=self.tau)

    def get_config(self):
        config = super().get_config()
        config["tau"] = self.tau
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class ZLPR(FZLPR):
    """ZLPR loss of Su et al. 2022 (paper eq. 4): FZLPR with the temperature fixed to 1."""

    def __init__(self, reduction="sum_over_batch_size", name="zlpr", dtype=None):
        super().__init__(tau=1.0, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("tau")
        return config


def rows_for_valid_mean(elem, valid):
    """Per-row values whose batch mean (Keras' default reduction) is the mean of ``elem`` over
    the ``valid`` entries of the batch: each row's sum divided by (valid entries / rows)."""
    row_sum = ops.sum(elem, axis=-1)
    n_valid = ops.sum(ops.cast(valid, elem.dtype))
    n_rows = ops.cast(ops.size(row_sum), elem.dtype)
    return row_sum * n_rows / ops.maximum(n_valid, 1.0)


_BINARY_KINDS = ("bce", "focal")


@keras.saving.register_keras_serializable(package="cxr_keras")
class MaskedBinaryLoss(keras.losses.Loss):
    """Keras' binary cross-entropy or binary focal cross-entropy with NaN targets ignored.

    ``kind="bce"`` uses ``keras.losses.binary_crossentropy``; ``kind="focal"`` uses
    ``keras.losses.binary_focal_crossentropy`` with ``gamma``, ``alpha`` and
    ``apply_class_balancing`` (ignored for bce). Each label's loss is computed elementwise; entries
    whose target is NaN are dropped and the result is the **mean over the valid entries of the
    batch** (with the default reduction): the per-sample value returned by ``call`` is the row's
    sum of valid losses divided by (number of valid entries in the batch / batch size). Without NaN
    targets this equals keras' own ``BinaryCrossentropy`` / ``BinaryFocalCrossentropy``.
    A batch with no valid entry gives 0.
    """

    def __init__(self, kind="bce", from_logits=True, gamma=2.0, alpha=0.25,
                 apply_class_balancing=False, label_smoothing=0.0,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        if kind not in _BINARY_KINDS:
            raise ValueError(f"MaskedBinaryLoss: kind must be one of {_BINARY_KINDS}, got {kind!r}")
        super().__init__(name=name or f"masked_{kind}", reduction=reduction, dtype=dtype)
        self.kind = kind
        self.from_logits = bool(from_logits)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.apply_class_balancing = bool(apply_class_balancing)
        self.label_smoothing = float(label_smoothing)

    def _elementwise(self, y_true, y_pred):
        # A trailing axis of size 1 makes keras' per-sample mean over the last axis elementwise.
        yt = ops.expand_dims(y_true, -1)
        yp = ops.expand_dims(y_pred, -1)
        if self.kind == "bce":
            return keras.losses.binary_crossentropy(
                yt, yp, from_logits=self.from_logits, label_smoothing=self.label_smoothing)
        return keras.losses.binary_focal_crossentropy(
            yt, yp, apply_class_balancing=self.apply_class_balancing, alpha=self.alpha,
            gamma=self.gamma, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        valid = ops.logical_not(ops.isnan(y_true))
        y_clean = ops.where(valid, y_true, ops.zeros_like(y_true))
        elem = ops.where(valid, self._elementwise(y_clean, y_pred), ops.zeros_like(y_pred))
        return rows_for_valid_mean(elem, valid)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, from_logits=self.from_logits, gamma=self.gamma,
                      alpha=self.alpha, apply_class_balancing=self.apply_class_balancing,
                      label_smoothing=self.label_smoothing)
        return config


def _masked_bce(**kwargs):
    return MaskedBinaryLoss(kind="bce", **{"from_logits": True, **kwargs})


def _masked_focal(**kwargs):
    defaults = dict(from_logits=True, gamma=2.0, alpha=0.25, apply_class_balancing=True)
    return MaskedBinaryLoss(kind="focal", **{**defaults, **kwargs})


#: Multi-label losses on logits with NaN = "ignore" (name -> factory).
MULTILABEL_LOSSES = {"bce": _masked_bce, "focal": _masked_focal, "zlpr": ZLPR, "fzlpr": FZLPR}
LOSS_NAMES = tuple(MULTILABEL_LOSSES)


def get_loss(name, **kwargs):
    """Loss by name: ``"bce"``, ``"focal"``, ``"zlpr"`` or ``"fzlpr"`` (keyword arguments forwarded).

    ``bce`` and ``focal`` are the NaN-masking :class:`MaskedBinaryLoss` versions of keras'
    ``BinaryCrossentropy(from_logits=True)`` and ``BinaryFocalCrossentropy(from_logits=True,
    gamma=2.0, alpha=0.25, apply_class_balancing=True)`` (SPEC CHOICE: the paper only says
    gamma = 2.0). ``fzlpr`` defaults to tau = 0.2 (paper).
    """
    key = str(name).lower()
    if key not in MULTILABEL_LOSSES:
        raise ValueError(f"get_loss: unknown loss {name!r}; known: {LOSS_NAMES}")
    return MULTILABEL_LOSSES[key](**kwargs)
