"""DenseNet (Huang et al., CVPR 2017) of any depth, without top, with ``keras.applications``' layer
names, so that the reduced networks of quick runs and tests share the full DenseNet121's design
and names (``conv3_block12_concat``, ``pool2_conv``, ``relu``).

Built from public Keras layers only. At blocks (6, 12, 24, 16) it is ``DenseNet121(include_top=
False, weights=None)`` layer for layer (checked in the tests: same names, same weight shapes, same
outputs after a weight copy); full-size ImageNet weights still come through ``keras.applications``.
"""

from __future__ import annotations

import keras
from keras import layers

from ..layers.batch_norm import FusedBatchNormalization

GROWTH_RATE = 32
BN_EPSILON = 1.001e-5  # keras.applications' DenseNet


def _bn_relu(x, name):
    x = FusedBatchNormalization(axis=-1, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv_block(x, name):
    """BN-ReLU-Conv 1x1 (4k) -> BN-ReLU-Conv 3x3 (k), concatenated to the input (k = 32)."""
    y = _bn_relu(x, f"{name}_0")
    y = layers.Conv2D(4 * GROWTH_RATE, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = _bn_relu(y, f"{name}_1")
    y = layers.Conv2D(GROWTH_RATE, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([x, y])


def _transition(x, name):
    """BN-ReLU-Conv 1x1 halving the channels -> 2x2 average pooling."""
    channels = int(x.shape[-1]) // 2
    x = _bn_relu(x, name)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def densenet(blocks=(6, 12, 24, 16), input_shape=(224, 224, 3), name="densenet"):
    """DenseNet feature extractor (no top, random weights): stem, four dense blocks of
    ``blocks`` conv blocks with transitions between them, final BN-ReLU (layer ``"relu"``).

    Example:
        >>> base = densenet((1, 2, 2, 1), input_shape=(64, 64, 3))
        >>> base.get_layer("relu").output.shape
        (None, 2, 2, 92)
    """
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"densenet: `blocks` must be four positive counts, got {blocks}")
    inp = keras.Input(tuple(input_shape))
    x = layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(inp)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _bn_relu(x, "conv1")
    x = layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, count in enumerate(blocks, start=2):
        for i in range(count):
            x = _conv_block(x, f"conv{stage}_block{i + 1}")
        if stage < 5:
            x = _transition(x, f"pool{stage}")
    x = FusedBatchNormalization(axis=-1, epsilon=BN_EPSILON, name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    return keras.Model(inp, x, name=name)
