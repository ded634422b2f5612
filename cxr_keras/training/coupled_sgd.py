"""SGD with weight decay as PyTorch's ``torch.optim.SGD(weight_decay=wd)`` applies it, the
optimizer of MoCo v2 (He et al.; Chen et al. 2020): an L2 term added to the gradient before the
momentum, ``g <- g + wd * w``, on every parameter (MoCo's code decays biases and norms too).

Keras' ``SGD(weight_decay=wd)`` shrinks the weights by ``lr * wd`` outside the momentum buffer
(decoupled). Through the buffer the coupled term acts ``1 / (1 - momentum)`` times: at momentum 0.9
the coupled decay is about 10x the decoupled one at the same ``wd``.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_keras")
class CoupledDecaySGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose gradient gets ``coupled_weight_decay * w`` added first
    (PyTorch's SGD weight decay). With a constant learning rate the steps equal PyTorch's:
    ``buf <- momentum * buf + g + wd * w; w <- w - lr * buf``."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False,
                 coupled_weight_decay=0.0, **kwargs):
        if coupled_weight_decay < 0:
            raise ValueError(f"CoupledDecaySGD: coupled_weight_decay must be >= 0, got "
                             f"{coupled_weight_decay}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        if self.coupled_weight_decay:
            gradient = gradient + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config
