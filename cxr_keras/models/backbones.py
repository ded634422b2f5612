"""mtpret's backbones with multi-scale outputs (C2..C5, strides 4, 8, 16, 32) for the task heads.

``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's networks (:mod:`cxr_keras.models.resnet`,
:func:`cxr_keras.models.res2net.resnet50`; PyTorch checkpoints convert, "imagenet" is
torchvision's weights, which the paper's PyTorch code starts from); ``keras_resnet50``:
``keras.applications.ResNet50`` (Keras' own ImageNet weights; Caffe-style blocks, stride in the
1x1 convolution).
"""

from __future__ import annotations

import keras

from .batchnorm import with_fused_batch_norm

NAMES = ("resnet18", "resnet34", "resnet50", "keras_resnet50")
KERAS_RESNET50_STAGES = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                         "conv5_block3_out")


def feature_layers(model) -> list:
    """The names of the C2..C5 outputs of a backbone built here or by keras.applications."""
    from .res2net import stage_outputs

    names = {layer.name for layer in model.layers}
    if set(KERAS_RESNET50_STAGES) <= names:
        return list(KERAS_RESNET50_STAGES)
    stages = stage_outputs(model)
    return [stages[i] for i in (1, 2, 3, 4)]


def multiscale_backbone(name: str = "resnet18", input_shape=(224, 224, 3), weights=None,
                        **kwargs):
    """A functional model ``image -> [C2, C3, C4, C5]``; ``kwargs`` go to the builder (e.g.
    ``widths`` of a reduced ResNet-18 for tests)."""
    from . import resnet18, resnet34, resnet50

    if name not in NAMES:
        raise ValueError(f"backbone must be one of {NAMES}, got {name!r}")
    if name == "keras_resnet50":
        base = with_fused_batch_norm(keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs))
    else:
        base = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}[name](
            include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs)
    outputs = [base.get_layer(n).output for n in feature_layers(base)]
    return keras.Model(base.input, outputs, name=f"{name}_features")
