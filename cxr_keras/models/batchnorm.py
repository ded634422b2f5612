"""Batch normalisation of our models: the fused layer everywhere, and the momentum of short runs."""

from __future__ import annotations

import keras

from ..layers.batch_norm import FusedBatchNormalization


def with_fused_batch_norm(model):
    """A single-input functional ``model`` (e.g. ``keras.applications.DenseNet121``) with every
    ``keras.layers.BatchNormalization`` replaced by :class:`FusedBatchNormalization`: same layer
    names, configurations and weights (copied), other layers rebuilt from their configurations.
    Our own builders use the fused layer directly; this brings keras.applications backbones (and
    their ImageNet weights) to it. A model without Keras' layer is returned as it is."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    if not any(type(layer) is keras.layers.BatchNormalization for layer in model.layers):
        return model  # nothing to replace (e.g. our own reduced encoders)
    (source,) = [layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)]
    (spec,) = model.inputs
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=source.name)
    fused = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    fused.set_weights(model.get_weights())
    return fused


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
