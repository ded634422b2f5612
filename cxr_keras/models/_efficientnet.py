"""EfficientNet (Tan & Le, ICML 2019) of any width and depth, without top, with
``keras.applications``' layer names (``stem_conv``, ``block5c_add``, ``top_activation``), for the
reduced U-Net encoders of quick runs and tests.

Built from public Keras layers only. At coefficients (1.0, 1.0) it is ``EfficientNetB0(
include_top=False, weights=None)`` layer for layer (checked in the tests: same names, same weight
shapes, same outputs after a weight copy); ImageNet weights still come through
``keras.applications``. Inputs are RGB on [0, 255]: the model rescales and normalises itself.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from ..layers.batch_norm import FusedBatchNormalization

# EfficientNet-B0's stages: (kernel, repeats, filters in, filters out, expansion, stride);
# squeeze-and-excitation ratio 0.25 everywhere.
B0_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
# keras.applications' initialisers (the reference TF implementation's)
CONV_INIT = {"class_name": "VarianceScaling",
             "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


def round_filters(filters, width_coefficient, divisor=8):
    """Channels scaled by ``width_coefficient``, rounded to a multiple of ``divisor`` and never
    more than 10% below the scaled value."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats, depth_coefficient):
    """Blocks per stage scaled by ``depth_coefficient``, rounded up."""
    return int(math.ceil(depth_coefficient * repeats))


def _pad_for_stride2(x, kernel):
    """The asymmetric 'same' padding of a stride-2 convolution (TF's convention)."""
    size = x.shape[1:3]
    adjust = (1, 1) if size[0] is None else (1 - size[0] % 2, 1 - size[1] % 2)
    half = (kernel // 2, kernel // 2)
    return ((half[0] - adjust[0], half[0]), (half[1] - adjust[1], half[1]))


def _mbconv(x, name, kernel, filters_in, filters_out, expansion, stride, drop_rate):
    """Inverted residual block: expand 1x1 -> depthwise -> squeeze-excite -> project 1x1 (+ skip)."""
    inputs = x
    filters = filters_in * expansion
    if expansion != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
                          name=f"{name}expand_conv")(x)
        x = FusedBatchNormalization(axis=-1, name=f"{name}expand_bn")(x)
        x = layers.Activation("swish", name=f"{name}expand_activation")(x)
    padding = "same"
    if stride == 2:
        x = layers.ZeroPadding2D(_pad_for_stride2(x, kernel), name=f"{name}dwconv_pad")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                               depthwise_initializer=CONV_INIT, name=f"{name}dwconv")(x)
    x = FusedBatchNormalization(axis=-1, name=f"{name}bn")(x)
    x = layers.Activation("swish", name=f"{name}activation")(x)
    se = layers.GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
    se = layers.Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
    se = layers.Conv2D(max(1, int(filters_in * SE_RATIO)), 1, padding="same", activation="swish",
                       kernel_initializer=CONV_INIT, name=f"{name}se_reduce")(se)
    se = layers.Conv2D(filters, 1, padding="same", activation="sigmoid",
                       kernel_initializer=CONV_INIT, name=f"{name}se_expand")(se)
    x = layers.Multiply(name=f"{name}se_excite")([x, se])
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
                      name=f"{name}project_conv")(x)
    x = FusedBatchNormalization(axis=-1, name=f"{name}project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def efficientnet(width_coefficient=1.0, depth_coefficient=1.0, input_shape=(224, 224, 3),
                 drop_connect_rate=0.2, name="efficientnet"):
    """EfficientNet feature extractor (no top, random weights), output ``top_activation``.

    Example:
        >>> enc = efficientnet(0.5, 0.5, input_shape=(64, 64, 3))
        >>> enc.output.shape
        (None, 2, 2, 640)
    """
    def width(c):
        return round_filters(c, width_coefficient)

    inp = keras.Input(tuple(input_shape))
    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(inp)
    x = layers.Normalization(axis=-1, name="normalization")(x)
    x = layers.ZeroPadding2D(_pad_for_stride2(x, 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(width(32), 3, strides=2, padding="valid", use_bias=False,
                      kernel_initializer=CONV_INIT, name="stem_conv")(x)
    x = FusedBatchNormalization(axis=-1, name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_activation")(x)
    total = sum(round_repeats(stage[1], depth_coefficient) for stage in B0_STAGES)
    done = 0
    for i, (kernel, repeats, f_in, f_out, expansion, stride) in enumerate(B0_STAGES):
        f_in, f_out = width(f_in), width(f_out)
        for j in range(round_repeats(repeats, depth_coefficient)):
            x = _mbconv(x, f"block{i + 1}{chr(ord('a') + j)}_", kernel,
                        f_in if j == 0 else f_out, f_out, expansion, stride if j == 0 else 1,
                        drop_connect_rate * done / total)
            done += 1
    x = layers.Conv2D(width(1280), 1, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
                      name="top_conv")(x)
    x = FusedBatchNormalization(axis=-1, name="top_bn")(x)
    x = layers.Activation("swish", name="top_activation")(x)
    return keras.Model(inp, x, name=name)
