"""The 12 multi-class classification losses of ``multiloss``, incl. the calibrated (DCA) losses.

Paper: Rajaraman, Zamzmi, Antani, "Multi-loss ensemble deep learning for chest X-ray classification"
(SPEC section 2, ``multiloss``; paper section 2.3.1, eqs. 13-28).

Every loss takes **softmax probabilities** ``p = y_pred`` of shape ``(B, K)`` and one-hot (or
smoothed) targets ``y_true`` of the same shape. Probabilities entering a logarithm are clipped with
``keras.config.epsilon()``, like Keras' own probability losses.

The "difference" of eq. 22 (the DCA term of Liang et al.) is a **batch-level scalar**. The
calibrated losses return per-sample values ``base_i + lam * difference``, so keras' default
``"sum_over_batch_size"`` reduction gives ``mean_i(base_i) + lam * difference`` (the paper's
formula). With a sample weight ``w`` (e.g. ``class_weight`` in ``fit``) it gives
``mean_i(w_i base_i) + lam * difference * mean_i(w_i)``; with ``reduction="sum"`` the term is
counted ``B`` times.

Use :func:`get_classification_loss` / :data:`CLASSIFICATION_LOSSES` to get the paper's 12
configurations by name. ``"cce_entropy"`` (eq. 24) is CCE - beta * H(p) averaged over the batch in
the loss itself (:class:`NegativeEntropyCrossentropy`): the value of the paper's activity
regulariser on the softmax layer divided by the batch size, on every Keras version.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import keras
from keras import ops


def _eps(dtype):
    return ops.cast(keras.config.epsilon(), dtype)


def calibration_difference(y_true, y_pred, gradient=True):
    """DCA term, paper eq. 22: ``|mean_batch(correct) - mean_batch(max_k p_k)|`` (a scalar).

    ``correct`` is 1 where ``argmax(y_pred) == argmax(y_true)``: the batch accuracy is a step
    function, so it is a constant for differentiation; the gradient flows through the mean
    confidence ``max_k p_k``. ``gradient=False`` reproduces the original code, which computes the
    term in NumPy so that it carries no gradient (here: ``ops.stop_gradient``); the value is the
    same. Leading axes other than the last are all averaged.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    correct = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), ops.argmax(y_true, axis=-1)),
                       y_pred.dtype)
    accuracy = ops.stop_gradient(ops.mean(correct))
    confidence = ops.mean(ops.max(y_pred, axis=-1))
    difference = ops.abs(accuracy - confidence)
    return difference if gradient else ops.stop_gradient(difference)


def entropy(p):
    """Per-sample Shannon entropy, paper eq. 23: ``H(p) = -sum_k p_k log p_k`` (last axis).

    The logarithm's argument is clipped to ``[epsilon, 1]`` (so ``p_k = 0`` contributes 0).
    """
    p = ops.convert_to_tensor(p)
    return -ops.sum(p * ops.log(ops.clip(p, _eps(p.dtype), 1.0)), axis=-1)


def _as_loss(base, who):
    """A keras Loss instance from an instance, a serialized config dict or a registered name."""
    if isinstance(base, keras.losses.Loss):
        return base
    obj = keras.losses.get(base)
    if not isinstance(obj, keras.losses.Loss):
        raise TypeError(f"{who}: base must be a keras.losses.Loss instance or its serialized "
                        f"config, got {base!r}")
    return obj


@keras.saving.register_keras_serializable(package="cxr_keras")
class CalibratedLoss(keras.losses.Loss):
    """``base + lam * difference`` (paper eqs. 21, 25-28); ``difference`` is eq. 22.

    ``base`` is any keras Loss on probabilities (its per-sample ``call`` is used, its own
    reduction ignored). ``gradient=False`` stops the gradient of the DCA term (original code).
    ``divide_by_classes=True`` divides the base loss by ``K`` (the literal ``-1/K sum_k`` of
    eq. 21); the default is the standard per-sample loss (SPEC reading and original code).
    The scalar term is added to every sample, so the default reduction gives
    ``mean(base) + lam * difference`` (see the module docstring for sample weights).
    """

    def __init__(self, base, lam=10.0, gradient=True, divide_by_classes=False,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        base = _as_loss(base, "CalibratedLoss")
        super().__init__(name=name or f"calibrated_{base.name}", reduction=reduction, dtype=dtype)
        self.base = base
        self.lam = float(lam)
        self.gradient = bool(gradient)
        self.divide_by_classes = bool(divide_by_classes)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        per_sample = ops.cast(self.base.call(y_true, y_pred), y_pred.dtype)
        if self.divide_by_classes:
            per_sample = per_sample / ops.cast(ops.shape(y_pred)[-1], y_pred.dtype)
        difference = calibration_difference(y_true, y_pred, gradient=self.gradient)
        return per_sample + ops.cast(self.lam, y_pred.dtype) * difference

    def get_config(self):
        config = super().get_config()
        config.update(base=keras.losses.serialize(self.base), lam=self.lam,
                      gradient=self.gradient, divide_by_classes=self.divide_by_classes)
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class LabelSmoothedLoss(keras.losses.Loss):
    """``base`` evaluated on smoothed targets ``(1 - smoothing) * y + smoothing / denominator``.

    ``denominator=None`` uses the number of classes ``K`` (paper eq. 20, same as keras'
    ``label_smoothing``); the original code's label-smoothed focal loss uses ``denominator=2``
    with K = 3, so its smoothed targets sum to 1.1 instead of 1.
    """

    def __init__(self, base, smoothing=0.2, denominator=None,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        base = _as_loss(base, "LabelSmoothedLoss")
        if not 0.0 <= float(smoothing) <= 1.0:
            raise ValueError(f"LabelSmoothedLoss: smoothing must be in [0, 1], got {smoothing!r}")
        if denominator is not None and not float(denominator) > 0:
            raise ValueError(f"LabelSmoothedLoss: denominator must be > 0, got {denominator!r}")
        super().__init__(name=name or f"smoothed_{base.name}", reduction=reduction, dtype=dtype)
        self.base = base
        self.smoothing = float(smoothing)
        self.denominator = None if denominator is None else float(denominator)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        denominator = (ops.cast(ops.shape(y_true)[-1], y_pred.dtype) if self.denominator is None
                       else ops.cast(self.denominator, y_pred.dtype))
        smoothed = y_true * (1.0 - self.smoothing) + self.smoothing / denominator
        return ops.cast(self.base.call(smoothed, y_pred), y_pred.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(base=keras.losses.serialize(self.base), smoothing=self.smoothing,
                      denominator=self.denominator)
        return config


@keras.saving.register_keras_serializable(package="cxr_keras")
class NegativeEntropyCrossentropy(keras.losses.Loss):
    """Per-sample ``CCE(y, p) - beta * H(p)`` (paper eqs. 23-25, without the DCA term).

    CCE is keras' ``categorical_crossentropy``; ``H`` is :func:`entropy`. A positive ``beta``
    penalises confident (low-entropy) outputs. Wrap in :class:`CalibratedLoss` for eq. 25.
    """

    def __init__(self, beta=0.001, reduction="sum_over_batch_size",
                 name="negative_entropy_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        cce = keras.losses.categorical_crossentropy(y_true, y_pred)
        return cce - ops.cast(self.beta, y_pred.dtype) * entropy(y_pred)

    def get_config(self):
        config = super().get_config()
        config["beta"] = self.beta
        return config


def keras_divides_activity_losses() -> bool:
    """Whether this Keras divides a layer's activity-regulariser loss by the batch size: Keras 3.14
    and later do (keras-team/keras#22021, as its documentation always said); 3.0-3.13 add the
    regulariser's value as it is."""
    major, minor = (int(part) for part in keras.version().split(".")[:2])
    return (major, minor) >= (3, 14)


@keras.saving.register_keras_serializable(package="cxr_keras")
class EntropyRegularizer(keras.regularizers.Regularizer):
    """Entropy activity regulariser for a softmax output (paper eq. 24): ``-beta * H(p)``.

    The registry's ``"cce_entropy"`` does not use it (its loss holds the penalty, which does not
    depend on how Keras treats activity losses); kept for models saved with it and for users of
    the activity form. Attached as ``activity_regularizer`` of the final softmax ``Dense``, the
    penalty is ``-beta * mean_batch(H(p))``: ``__call__`` returns the batch sum where Keras
    divides activity losses by the batch size (3.14 and later), the batch mean where it does not.
    """

    def __init__(self, beta=2.0):
        self.beta = float(beta)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        total = -ops.cast(self.beta, x.dtype) * ops.sum(entropy(x))
        if keras_divides_activity_losses() or len(x.shape) == 0:
            return total
        return total / ops.cast(ops.shape(x)[0], x.dtype)

    def get_config(self):
        return {"beta": self.beta}


# --------------------------------------------------------------------------------------------
# Registry of the paper's 12 configurations.


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One of the paper's losses with its hyper-parameters.

    ``make_loss()`` builds a fresh keras Loss. ``output_regularizer``: an activity regulariser the
    final softmax ``Dense`` must carry, or ``None`` (every loss of the registry: ``"cce_entropy"``
    holds its entropy penalty in the loss). ``options`` are the resolved keyword options (paper
    defaults + overrides).
    """

    name: str
    title: str
    equation: str
    options: Mapping[str, Any]
    make_loss: Callable[[], keras.losses.Loss] = dataclasses.field(repr=False)
    output_regularizer: Optional[keras.regularizers.Regularizer] = \
        dataclasses.field(default=None, repr=False)

    def build(self):
        """Return ``(fresh loss, output_regularizer or None)``."""
        return self.make_loss(), self.output_regularizer


def _focal(gamma, name=None):
    # Paper eq. 14 has no class-balancing alpha: keras' default alpha=0.25 would scale the loss.
    return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=gamma,
                                                     **({"name": name} if name else {}))


def _make_cce(name):
    return keras.losses.CategoricalCrossentropy(name=name)


def _make_focal(name, gamma):
    return _focal(gamma, name)


def _make_kld(name):
    return keras.losses.KLDivergence(name=name)


def _make_hinge(name):
    return keras.losses.CategoricalHinge(name=name)


def _make_ls_cce(name, label_smoothing):
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, name=name)


def _make_ls_focal(name, gamma, label_smoothing, smoothing_denominator):
    if smoothing_denominator is None:
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=gamma, label_smoothing=label_smoothing, name=name)
    return LabelSmoothedLoss(_focal(gamma), smoothing=label_smoothing,
                             denominator=smoothing_denominator, name=name)


def _make_cal_cce(name, lam, gradient, divide_by_classes):
    return CalibratedLoss(keras.losses.CategoricalCrossentropy(), lam=lam, gradient=gradient,
                          divide_by_classes=divide_by_classes, name=name)


def _make_cce_entropy(name, beta, entropy_regularizer):
    # eq. 24, -log p_y - beta H(p), averaged over the batch by the loss: what the paper's activity
    # regulariser on the softmax layer adds to the CCE (tf.keras divided it by the batch size)
    if not entropy_regularizer:  # the original code: its regulariser factory returns None
        return keras.losses.CategoricalCrossentropy(name=name)
    return NegativeEntropyCrossentropy(beta=beta, name=name)


def _make_cal_neg_entropy(name, beta, lam, gradient):
    return CalibratedLoss(NegativeEntropyCrossentropy(beta=beta), lam=lam, gradient=gradient,
                          name=name)


def _make_cal_kld(name, lam, gradient):
    return CalibratedLoss(keras.losses.KLDivergence(), lam=lam, gradient=gradient, name=name)


def _make_cal_focal(name, gamma, lam, gradient):
    return CalibratedLoss(_focal(gamma), lam=lam, gradient=gradient, name=name)


def _make_cal_hinge(name, lam, gradient):
    return CalibratedLoss(keras.losses.CategoricalHinge(), lam=lam, gradient=gradient, name=name)


# name -> (title, equation, builder, paper defaults)
_TABLE = collections.OrderedDict([
    ("cce", ("CCE", "eq. 13", _make_cce, {})),
    ("focal", ("Categorical focal", "eq. 14", _make_focal, {"gamma": 1.0})),
    ("kld", ("KL divergence", "eq. 15", _make_kld, {})),
    ("hinge", ("Categorical hinge", "eqs. 17-19", _make_hinge, {})),
    ("ls_cce", ("Label-smoothed CCE", "eqs. 13, 20", _make_ls_cce,
                {"label_smoothing": 0.2})),
    ("ls_focal", ("Label-smoothed categorical focal", "eqs. 14, 20", _make_ls_focal,
                  {"gamma": 1.0, "label_smoothing": 0.2, "smoothing_denominator": None})),
    ("cal_cce", ("Calibrated CCE", "eqs. 21-22", _make_cal_cce,
                 {"lam": 10.0, "gradient": True, "divide_by_classes": False})),
    ("cce_entropy", ("CCE with entropy-based regularization", "eqs. 23-24", _make_cce_entropy,
                     {"beta": 2.0, "entropy_regularizer": True})),
    ("cal_neg_entropy", ("Calibrated negative entropy", "eqs. 22-25", _make_cal_neg_entropy,
                         {"beta": 0.001, "lam": 10.0, "gradient": True})),
    ("cal_kld", ("Calibrated KL divergence", "eqs. 22, 26", _make_cal_kld,
                 {"lam": 1.0, "gradient": True})),
    ("cal_focal", ("Calibrated categorical focal", "eqs. 22, 27", _make_cal_focal,
                   {"gamma": 1.0, "lam": 1.0, "gradient": True})),
    ("cal_hinge", ("Calibrated categorical hinge", "eqs. 22, 28", _make_cal_hinge,
                   {"lam": 10.0, "gradient": True})),
])

# Presets reproducing the authors' TF 2.4 script (applied by ``original_code=True``).
_ORIGINAL_CODE = {
    "ls_focal": {"smoothing_denominator": 2.0, "gamma": 2.0},
    "cal_cce": {"gradient": False},
    "cce_entropy": {"entropy_regularizer": False},
    "cal_neg_entropy": {"gradient": False},
    "cal_kld": {"gradient": False},
    "cal_focal": {"gradient": False, "gamma": 2.0},
    "cal_hinge": {"gradient": False},
}


def _make_spec(name, options):
    title, equation, builder, _ = _TABLE[name]
    return LossSpec(name=name, title=title, equation=equation, options=dict(options),
                    make_loss=functools.partial(builder, name=name, **options))


#: The paper's 12 losses with its hyper-parameters, in the paper's order (name -> LossSpec).
CLASSIFICATION_LOSSES = collections.OrderedDict(
    (name, _make_spec(name, row[3])) for name, row in _TABLE.items())

CLASSIFICATION_LOSS_NAMES = tuple(CLASSIFICATION_LOSSES)


def get_classification_loss(name, original_code=False, **overrides):
    """:class:`LossSpec` of one of the 12 losses, with paper defaults updated by ``overrides``.

    Names: ``cce, focal, kld, hinge, ls_cce, ls_focal, cal_cce, cce_entropy, cal_neg_entropy,
    cal_kld, cal_focal, cal_hinge``. Options (paper defaults in :data:`CLASSIFICATION_LOSSES`):
    ``gamma`` (focal losses), ``label_smoothing``, ``smoothing_denominator`` (``None`` = K, paper;
    2 = original code), ``lam`` (DCA weight), ``gradient`` (``False`` = DCA term without gradient,
    original code), ``divide_by_classes`` (cal_cce only: literal ``1/K`` of eq. 21), ``beta``
    (entropy weight), ``entropy_regularizer`` (cce_entropy only: ``False`` = train without it,
    original code). ``original_code=True`` applies the original script's settings first (DCA
    without gradient, no entropy regulariser, label smoothing divided by 2, gamma 2 in the
    label-smoothed and calibrated focal losses); explicit ``overrides`` win.
    Usage: ``loss, reg = get_classification_loss("cal_cce").build()``.
    """
    key = str(name).lower()
    if key not in _TABLE:
        raise ValueError(f"get_classification_loss: unknown loss {name!r}; "
                         f"known: {CLASSIFICATION_LOSS_NAMES}")
    defaults = _TABLE[key][3]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"get_classification_loss({key!r}): unknown option(s) {unknown}; "
                        f"valid: {sorted(defaults) or 'none'}")
    options = dict(defaults)
    if original_code:
        options.update(_ORIGINAL_CODE.get(key, {}))
    options.update(overrides)
    return _make_spec(key, options)
