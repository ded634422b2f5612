"""Batch normalisation whose training pass is one fused kernel on the TensorFlow backend.

Keras 3's ``BatchNormalization`` computes a training step's moments and normalisation as separate
element-wise ops, and autodiff turns them into a dozen more for the gradient: on the TensorFlow
backend that was 32% of a DenseNet121 training step's op time and 17% of a Res2Net-50 one
(``benchmarks/profile_step.py``), where PyTorch (and tf.keras 2) run one fused kernel each way.
:class:`FusedBatchNormalization` is Keras' layer with that one step replaced; everything else
(arguments, variables, inference, masks, renorm, the JAX backend, where XLA fuses the ops itself)
is Keras' own code.
"""

from __future__ import annotations

import keras
from keras import ops

# the fused kernel's data layouts by input rank, channels last
_FUSED_RANKS = (4, 5)
# cuDNN's smallest epsilon (TensorFlow raises it to 1.001e-5 below this); Keras' code runs below it
_MIN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="cxr_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments, variables and results) whose training
    pass runs TensorFlow's fused kernel (``FusedBatchNormV3``, forward and gradient).

    In training, on channels-last inputs of rank 4 or 5, without a mask, renorm or synchronised
    statistics: ``y = gamma (x - mean_B) / sqrt(var_B + epsilon) + beta`` with the batch moments
    over every axis but the last, and the moving statistics updated as Keras does,
    ``moving = momentum * moving + (1 - momentum) * batch``, with the **biased** batch variance
    (Keras' convention; the kernel's Bessel-corrected one is scaled back by ``(n - 1) / n``).
    Half-precision inputs (mixed precision) go to the kernel as they are; it computes the moments
    in float32 and returns the input's type, as Keras' upcast does. Anything else, and every call
    on another backend, is Keras' ``call``.
    """

    def _fusable(self, inputs, training, mask):
        return (keras.backend.backend() == "tensorflow" and training and self.trainable
                and mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) in _FUSED_RANKS
                and self.axis in (-1, len(inputs.shape) - 1)
                and self.epsilon >= _MIN_EPSILON)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        from ..tf_fused_batch_norm import fused_batch_norm_training

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else ops.ones((channels,))
        beta = self.beta if self.center else ops.zeros((channels,))
        y, mean, variance = fused_batch_norm_training(
            inputs, ops.cast(gamma, "float32"), ops.cast(beta, "float32"), self.epsilon)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        return ops.cast(y, self.compute_dtype)
