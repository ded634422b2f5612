"""Batch normalisation of our models: the fused layer everywhere, and the momentum of short runs."""

from __future__ import annotations

import keras

from ..layers.batch_norm import FusedBatchNormalization


def replace_batch_norm(model, layer_class):
    """A single-input functional ``model`` with every batch-norm layer not of ``layer_class``
    (a ``keras.layers.BatchNormalization`` or subclass) rebuilt as ``layer_class``: same layer
    names, configurations and weights (copied), other layers rebuilt from their configurations.
    A model with nothing to replace is returned as it is."""

    def replaced(layer):
        return (isinstance(layer, keras.layers.BatchNormalization)
                and type(layer) is not layer_class)

    def clone(layer):
        cls = layer_class if replaced(layer) else layer.__class__
        return cls.from_config(layer.get_config())

    if not any(replaced(layer) for layer in model.layers):
        return model
    (source,) = [layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)]
    (spec,) = model.inputs
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=source.name)
    new = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def with_fused_batch_norm(model):
    """``model`` (e.g. ``keras.applications.DenseNet121``) with :class:`FusedBatchNormalization`
    for every batch norm (:func:`replace_batch_norm`). Our own builders use the fused layer
    directly; this brings keras.applications backbones (and their ImageNet weights) to it."""
    return replace_batch_norm(model, FusedBatchNormalization)


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
