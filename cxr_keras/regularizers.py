"""L2-SP (Li, Grandvalet & Davoine, ICML 2018), mtpret's regulariser between continual-learning
rounds (SPEC section 5):

    Omega(w) = alpha / 2 * ||w_S - w_S^0||^2 + beta / 2 * ||w_new||^2

``w_S``: the shared (backbone) weights, pulled toward ``w_S^0``, their values at the start of the
round (the previous round's weights); ``w_new``: the weights with no starting point (a task head
seen for the first time), plain weight decay. CHOICE alpha 0.1, beta 0.01 (the L2-SP authors'
code). Written with ``keras.ops``: the penalty can be added to a loss inside a compiled train
step on any backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_keras")
class L2SP:
    """``L2SP(alpha, beta)``: call :meth:`anchor` with the shared variables at the start of a
    round, then add ``l2sp(shared_variables, new_variables)`` to the loss."""

    def __init__(self, alpha: float = 0.1, beta: float = 0.01):
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2SP: alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.anchors = None

    def anchor(self, shared_variables) -> None:
        """Take the current values of ``shared_variables`` as ``w_S^0`` (a copy)."""
        self.anchors = [ops.convert_to_tensor(np.array(keras.ops.convert_to_numpy(v)))
                        for v in shared_variables]

    def __call__(self, shared_variables, new_variables=()):
        shared_variables = list(shared_variables)
        total = ops.convert_to_tensor(0.0)
        if shared_variables:
            if self.anchors is None:
                raise ValueError("L2SP: call anchor(shared_variables) before the first penalty")
            if len(self.anchors) != len(shared_variables):
                raise ValueError(f"L2SP: {len(shared_variables)} shared variables, "
                                 f"{len(self.anchors)} anchored")
            sq = [ops.sum(ops.square(ops.cast(v, "float32") - ops.cast(a, "float32")))
                  for v, a in zip(shared_variables, self.anchors)]
            total = total + 0.5 * self.alpha * ops.sum(ops.stack(sq))
        new_variables = list(new_variables)
        if new_variables:
            sq = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in new_variables]
            total = total + 0.5 * self.beta * ops.sum(ops.stack(sq))
        return total

    def distance(self, shared_variables) -> float:
        """||w_S - w_S^0||_2 (NumPy, for logs)."""
        return float(np.sqrt(sum(np.sum((np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                                         - np.asarray(keras.ops.convert_to_numpy(a))) ** 2)
                                 for v, a in zip(shared_variables, self.anchors))))

    def get_config(self):
        return {"alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
