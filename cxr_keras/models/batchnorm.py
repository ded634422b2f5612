"""Batch-normalisation momentum of a built model, for short runs."""

from __future__ import annotations

import keras


def set_bn_momentum(model, momentum: float | None):
    """Set every BatchNormalization layer's momentum (``None``: leave them). A quick run has
    ~100 steps: with Keras' 0.99 the moving statistics would still be near their initial values
    at evaluation; 0.9 lets them settle."""
    if momentum is None:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model
