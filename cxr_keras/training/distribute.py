"""Single-host multi-device data parallelism with ``tf.distribute.MirroredStrategy`` (TF-specific)."""

from __future__ import annotations

import tensorflow as tf


def mirrored_strategy(devices=None) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy over ``devices`` (default: every visible GPU).

    Build and compile the model inside ``strategy.scope()``; ``model.fit`` then splits each global
    batch of the tf.data pipeline across the replicas.
    """
    return tf.distribute.MirroredStrategy(devices=devices)
