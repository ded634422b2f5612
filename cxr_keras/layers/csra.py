"""Class-specific residual attention (CSRA; Zhu & Wu, ICCV 2021) as used by MLRFNet's MRFC.

Paper: Li et al., "MLRFNet", IEEE Access 2023, Sec. III-C, eq. (2):
``P = (1/HW) sum_j mu_j + lambda sum_j softmax_j(T mu_j) mu_j`` with T = 99 and
lambda = 0.5, 0.3, 0.1 for the Stage2, Stage3, Stage4 heads.
"""

from __future__ import annotations

import math

import keras
from keras import ops

_MAX = "max"


def _parse_temperature(temperature):
    """``"max"`` (or +inf) for max pooling over positions, else a positive float."""
    if isinstance(temperature, str):
        if temperature.strip().lower() in (_MAX, "inf", "+inf", "infinity"):
            return _MAX
        raise ValueError(f"CSRA: temperature must be a positive number or 'max', got {temperature!r}")
    t = float(temperature)
    if math.isinf(t) and t > 0:
        return _MAX
    if not t > 0 or math.isnan(t):
        raise ValueError(f"CSRA: temperature must be a positive number or 'max', got {temperature!r}")
    return t


@keras.saving.register_keras_serializable(package="cxr_keras")
class CSRA(keras.layers.Layer):
    """CSRA head, MLRFNet eq. (2): ``P = mean_j mu_j + lam * sum_j softmax_j(T mu_j) mu_j``.

    Input ``(B, H, W, C)`` channels-last; a bias-free 1x1 convolution (``kernel``, shape
    ``(C, num_classes)``) gives the class score maps ``mu`` ``(B, H, W, N)``; the softmax is taken
    per class over the ``H * W`` positions ``j``. Returns logits ``(B, N)``.

    Paper versus CSRA's own code (github Kevinz-code/CSRA):

    * ``temperature``: the default ``99`` is the paper's literal softmax at T = 99, computed
      stably (max-subtracted). CSRA's code instead treats ``T == 99`` as a flag for max pooling
      over positions; ``temperature="max"`` (or ``float("inf")``, the T -> inf limit) gives that.
      Any other positive float is a literal softmax temperature.
    * ``normalize=True`` divides each class's score map by the L2 norm of that class's 1x1
      weight vector, ``mu_c = (x . w_c) / ||w_c||``, as CSRA's code does; the MLRFNet paper does
      not mention it (default ``False``).

    The default initialiser, uniform in ``+-1/sqrt(C)``, matches PyTorch's ``Conv2d`` default.
    The attention softmax runs in at least float32 under mixed precision.
    """

    def __init__(self, num_classes, lam, temperature=99, normalize=False,
                 kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) != num_classes or int(num_classes) < 1:
            raise ValueError(f"CSRA: num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.lam = float(lam)
        self.temperature = _parse_temperature(temperature)
        self.normalize = bool(normalize)
        if kernel_initializer is None:
            # PyTorch Conv2d default (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            kernel_initializer = keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) < 3 or input_shape[-1] is None:
            raise ValueError(f"CSRA expects (B, ..., C) inputs with known C, got {input_shape}")
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.num_classes),
                                      initializer=self.kernel_initializer, trainable=True)

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        scores = ops.matmul(inputs, kernel)                                 # 1x1 conv: (B, H, W, N)
        if self.normalize:
            scores = scores / ops.sqrt(ops.sum(ops.square(kernel), axis=0))  # / ||w_c||
        if keras.backend.standardize_dtype(scores.dtype) in ("float16", "bfloat16"):
            scores = ops.cast(scores, "float32")
        axes = tuple(range(1, len(inputs.shape) - 1))                      # the H * W positions
        base = ops.mean(scores, axis=axes)                                 # (1/HW) sum_j mu_j
        if self.temperature == _MAX:
            att = ops.max(scores, axis=axes)
        else:
            logits = self.temperature * scores
            weights = ops.exp(logits - ops.max(logits, axis=axes, keepdims=True))
            weights = weights / ops.sum(weights, axis=axes, keepdims=True)  # softmax_j(T mu_j)
            att = ops.sum(weights * scores, axis=axes)
        return ops.cast(base + self.lam * att, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def flops(self, input_shape):
        """Multiply-accumulates of the 1x1 head per sample: ``H * W * C * N``.

        Only the 1x1 convolution is counted (pooling, softmax and normalisation are not), batch
        excluded. ``input_shape`` is ``(B, H, W, C)``.
        """
        dims = tuple(input_shape[1:])
        if any(d is None for d in dims):
            raise ValueError(f"CSRA.flops: spatial and channel dimensions must be known, got {input_shape}")
        return int(math.prod(int(d) for d in dims)) * self.num_classes

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, lam=self.lam, temperature=self.temperature,
                      normalize=self.normalize,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
