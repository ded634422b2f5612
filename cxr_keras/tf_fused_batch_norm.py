"""TensorFlow's fused batch-norm kernel for :class:`cxr_keras.layers.FusedBatchNormalization`
(TensorFlow-only: imported by the layer on the TensorFlow backend alone)."""

from __future__ import annotations

import tensorflow as tf

_LAYOUT = {4: "NHWC", 5: "NDHWC"}


def fused_batch_norm_training(x, gamma, beta, epsilon):
    """Training-mode batch norm of channels-last ``x`` (rank 4 or 5) by ``FusedBatchNormV3``.

    Returns ``(y, mean, variance)``: ``y`` in ``x``'s dtype, the float32 batch mean and the
    **biased** batch variance over every axis but the last. The kernel returns the
    Bessel-corrected variance, ``n / max(n - 1, 1)`` times the biased one for ``n`` values per
    channel; it is scaled back here. Its gradient is TensorFlow's ``FusedBatchNormGradV3``.
    """
    empty = tf.constant([], tf.float32)
    y, mean, corrected, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=float(epsilon),
        exponential_avg_factor=1.0, data_format=_LAYOUT[len(x.shape)], is_training=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    return y, mean, corrected * (tf.maximum(n - 1.0, 1.0) / n)
