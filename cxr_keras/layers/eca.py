"""Efficient channel attention (ECA; Wang et al., CVPR 2020) as used by MLRFNet.

Paper: Li et al., "MLRFNet", IEEE Access 2023, Sec. III-B, eq. (1):
``U~ = U * sigmoid(C1D_k(GAP(U)))`` with k = 3 (Fig. 4).
"""

from __future__ import annotations

import keras
from keras import ops


def _check_kernel_size(kernel_size):
    k = int(kernel_size)
    if k != kernel_size or k < 1 or k % 2 == 0:
        raise ValueError(f"ECA: kernel_size must be a positive odd integer, got {kernel_size!r}")
    return k


@keras.saving.register_keras_serializable(package="cxr_keras")
class ECA(keras.layers.Layer):
    """ECA channel gate, MLRFNet eq. (1): ``U~ = U * sigmoid(Conv1D_k(GAP(U)))``.

    Input ``(B, H, W, C)`` channels-last (any rank >= 3: every axis between batch and channels is
    pooled). The 1D convolution runs over the channel axis of the pooled ``(B, C)`` descriptor
    with a single filter of ``kernel_size`` (odd) taps, no bias and 'same' zero padding of
    ``(k - 1) // 2`` on each side -- ECA-Net's ``Conv1d(1, 1, k, padding=(k-1)//2, bias=False)``
    (a cross-correlation: ``z'_c = sum_i w_i z_{c + i - (k-1)//2}``). The weight is ``kernel``,
    shape ``(k,)``. The default initialiser, uniform in ``+-1/sqrt(k)``, matches PyTorch's
    ``Conv1d`` default. Output has the input's shape.
    """

    def __init__(self, kernel_size=3, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = _check_kernel_size(kernel_size)
        if kernel_initializer is None:
            # PyTorch Conv1d default (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            kernel_initializer = keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"ECA expects (B, ..., C) inputs of rank >= 3, got {input_shape}")
        if input_shape[-1] is None:
            raise ValueError("ECA: the channel dimension of the input must be known")
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size,),
                                      initializer=self.kernel_initializer, trainable=True)

    def call(self, inputs):
        rank = len(inputs.shape)
        pooled = ops.mean(inputs, axis=tuple(range(1, rank - 1)))          # GAP: (B, C)
        pad = (self.kernel_size - 1) // 2
        padded = ops.pad(pooled, [[0, 0], [pad, pad]])                     # zero 'same' padding
        channels = inputs.shape[-1]
        kernel = ops.cast(self.kernel, pooled.dtype)
        mixed = kernel[0] * padded[:, 0:channels]
        for i in range(1, self.kernel_size):                               # C1D_k over channels
            mixed = mixed + kernel[i] * padded[:, i:i + channels]
        gate = ops.sigmoid(mixed)
        gate = ops.reshape(gate, (-1,) + (1,) * (rank - 2) + (channels,))
        return inputs * gate

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def flops(self, input_shape):
        """Multiply-accumulates of the channel convolution per sample: ``C * k``.

        Only the 1D convolution is counted (GAP, sigmoid and the rescaling are not), batch
        excluded. ``input_shape`` is ``(B, ..., C)``.
        """
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ECA.flops: the channel dimension must be known")
        return int(channels) * self.kernel_size

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config

