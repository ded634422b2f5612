"""mtpret's cyclic cosine learning rate (Liao et al. 2024, eq. 4):

    eta_t = eta_min + 1/2 (eta_max - eta_min) (1 + cos(2 pi t / T))

with t the iteration within the current cycle of T iterations: each cycle starts at eta_max,
reaches eta_min half-way and climbs back to eta_max, so every task of a round starts from the
same high rate (the paper's "cyclic and reshuffled learning schedule").
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_keras")
class CyclicCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Eq. (4) with period ``cycle_steps`` (T), from ``max_lr`` down to ``min_lr`` and back."""

    def __init__(self, max_lr: float, min_lr: float, cycle_steps: int):
        if cycle_steps < 1:
            raise ValueError(f"CyclicCosine: cycle_steps must be >= 1, got {cycle_steps}")
        if not 0.0 <= min_lr <= max_lr:
            raise ValueError(f"CyclicCosine: need 0 <= min_lr <= max_lr, got {min_lr}, {max_lr}")
        self.max_lr, self.min_lr, self.cycle_steps = float(max_lr), float(min_lr), int(cycle_steps)

    def __call__(self, step):
        t = ops.mod(ops.cast(step, "float32"), float(self.cycle_steps))
        cos = ops.cos(2.0 * math.pi * t / float(self.cycle_steps))
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + cos)

    def get_config(self):
        return {"max_lr": self.max_lr, "min_lr": self.min_lr, "cycle_steps": self.cycle_steps}
