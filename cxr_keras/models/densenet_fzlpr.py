"""DenseNet121 + custom convolutional top of the ``fzlpr`` paper (Hanif et al. 2025, Sec. 3.2, Fig. 2).

The model is one flat functional graph built on the backbone's input and output, so every backbone
layer stays reachable by name: ``model.get_layer("relu")`` is DenseNet121's final 7x7x1024 feature
map (the "conv5" block the paper uses for Grad-CAM). The output is the logit ("label score") of
the final BatchNormalization; the paper thresholds it at 0.
"""

from __future__ import annotations

import keras
from keras import layers

from ..layers.batch_norm import FusedBatchNormalization
from .batchnorm import with_fused_batch_norm

# The custom top, in order (SPEC section 1). Everything else in the model is the backbone.
TOP_LAYER_NAMES = (
    "top_conv1", "top_bn1", "top_relu1",
    "top_conv2", "top_bn2", "top_relu2",
    "top_dropout", "top_flatten",
    "top_dense1", "top_bn3", "top_relu3",
    "logits", "logits_bn",
)

FEATURE_LAYER = "relu"  # DenseNet121's final activation, 7x7x1024 at 224x224 input


def densenet121_fzlpr(num_classes=14, weights="imagenet", input_shape=(224, 224, 3), base=None,
                      name="densenet121_fzlpr"):
    """Build DenseNet121 (no top) + the paper's custom top; outputs logits of shape (N, num_classes).

    Top (paper Sec. 3.2): Conv2D(256, 3x3, 'valid') -> BN -> ReLU -> Conv2D(128, 3x3, 'valid') ->
    BN -> ReLU -> Dropout(0.1) -> Flatten (3x3x128 = 1152 at 224 input) -> Dense(64) -> BN -> ReLU
    -> Dense(num_classes) -> BN. Parameters at 224x224x3 and 14 classes: backbone 7,037,504, top
    2,731,142, total 9,768,646 (paper: ~7.03 M + ~2.73 M).

    Args:
        weights: ``"imagenet"`` (keras' DenseNet121 no-top download), ``None`` (random), or a path
            to a local weights file for the **backbone without top**, passed to
            ``keras.applications.DenseNet121(include_top=False, weights=path)``. To restore a whole
            trained model use ``keras.saving.load_model`` or ``model.load_weights`` instead.
        base: optional prebuilt backbone (any functional model whose output is a feature map,
            e.g. a reduced DenseNet for tests); ``weights`` and ``input_shape`` are then ignored.
            Its layers become part of the returned model (shared, not copied).
    """
    if base is None:
        base = with_fused_batch_norm(keras.applications.DenseNet121(
            include_top=False, weights=weights, input_shape=tuple(input_shape)))
    x = base.output
    x = layers.Conv2D(256, 3, strides=1, padding="valid", name="top_conv1")(x)
    x = FusedBatchNormalization(name="top_bn1")(x)
    x = layers.Activation("relu", name="top_relu1")(x)
    x = layers.Conv2D(128, 3, strides=1, padding="valid", name="top_conv2")(x)
    x = FusedBatchNormalization(name="top_bn2")(x)
    x = layers.Activation("relu", name="top_relu2")(x)
    x = layers.Dropout(0.1, name="top_dropout")(x)
    x = layers.Flatten(name="top_flatten")(x)
    x = layers.Dense(64, name="top_dense1")(x)
    x = FusedBatchNormalization(name="top_bn3")(x)
    x = layers.Activation("relu", name="top_relu3")(x)
    # float32 outputs under mixed precision (Keras' advice for output layers): AUCs and the
    # exported SavedModel then see full-precision scores
    x = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    x = FusedBatchNormalization(name="logits_bn", dtype="float32")(x)
    return keras.Model(base.input, x, name=name)


def top_layers(model):
    """The layers of the custom top (by :data:`TOP_LAYER_NAMES`)."""
    return [model.get_layer(n) for n in TOP_LAYER_NAMES]


def backbone_layers(model):
    """Every layer of ``model`` outside the custom top (input layers included)."""
    top = set(TOP_LAYER_NAMES)
    return [layer for layer in model.layers if layer.name not in top]


def set_backbone_trainable(model, trainable: bool):
    """Freeze (``False``) or unfreeze (``True``) every layer except the custom top (paper Sec. 4.2).

    Stage 1 of the paper trains only the top with the backbone frozen; stage 2 trains all layers.
    In Keras 3 a BatchNormalization layer with ``trainable=False`` also runs in inference mode
    (moving statistics frozen). The top stays trainable. Recompile the model after calling this.
    Returns ``model``.
    """
    for layer in backbone_layers(model):
        layer.trainable = bool(trainable)
    for layer in top_layers(model):
        layer.trainable = True
    return model
