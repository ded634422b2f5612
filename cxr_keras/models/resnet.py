"""ResNet-18 / ResNet-34 (He et al., CVPR 2016) with BasicBlocks, as torchvision builds them:
dual-MAE's CNN baseline (ResNet-34, "about 22 M parameters like ViT-S") and mtpret's ResNet-18
backbone.

The stem, the padding conventions (PyTorch's symmetric padding: explicit ``ZeroPadding2D`` at
stride 2, "same" at stride 1), BatchNormalization (epsilon 1e-5, momentum 0.9 = PyTorch's 0.1), the
weight handling and the layer naming are those of :mod:`cxr_keras.models.res2net`:
``conv1``/``bn1``, then ``layer{i}_{j}_conv1``, ``_bn1``, ``_conv2``, ``_bn2``,
``_downsample_conv``, ``_downsample_bn`` and the block output ``layer{i}_{j}_out``; ``fc`` is the
classifier. Trainable parameters without the classifier: 11,176,512 (ResNet-18) and 21,284,672
(ResNet-34), torchvision's.
``weights="imagenet"`` converts timm's ``resnet18.tv_in1k`` / ``resnet34.tv_in1k`` (torchvision's
original ImageNet weights).
"""

from __future__ import annotations

import keras
from keras import layers

from ._resnet_blocks import bn, conv, finish, load_state_dict, load_weights, resolve_weights

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def _basic_block(x, planes, stride, prefix):
    y = conv(x, planes, 3, stride, 1, f"{prefix}conv1")
    y = layers.ReLU(name=f"{prefix}relu1")(bn(y, f"{prefix}bn1"))
    y = bn(conv(y, planes, 3, 1, 1, f"{prefix}conv2"), f"{prefix}bn2")
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = bn(conv(x, planes, 1, stride, 0, f"{prefix}downsample_conv"),
                       f"{prefix}downsample_bn")
    y = layers.Add(name=f"{prefix}residual")([y, shortcut])
    return layers.ReLU(name=f"{prefix}out")(y)


def _resnet(arch, include_top, weights, input_shape, pooling, classes, widths, name,
            classifier_activation):
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"{arch}: widths must be four positive integers, got {widths!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"{arch}: pooling must be None, 'avg' or 'max', got {pooling!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"{arch}: input_shape must be (height, width, channels), got "
                         f"{input_shape!r}")
    standard = widths == WIDTHS
    path = resolve_weights(weights, arch, standard, include_top, classes, input_shape)
    inp = keras.Input(tuple(input_shape), name="image")
    x = conv(inp, widths[0], 7, 2, 3, "conv1")
    x = layers.ReLU(name="relu")(bn(x, "bn1"))
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # = -inf padding after the ReLU
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    for i, (n, planes) in enumerate(zip(DEPTHS[arch], widths), start=1):
        for j in range(n):
            x = _basic_block(x, planes, 2 if (i > 1 and j == 0) else 1, f"layer{i}_{j}_")
    model = finish(inp, x, include_top, pooling, classes, classifier_activation, name or arch)
    return load_weights(model, path, arch, include_top, FROM_STATE_DICT[arch])


def resnet18(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=None,
             classes=1000, widths=WIDTHS, name="resnet18", classifier_activation=None):
    """torchvision's ResNet-18 (channels last); stage outputs 56x56x64 ... 7x7x512 at 224 input.

    ``include_top``, ``pooling``, ``classes`` and ``classifier_activation`` as for
    :func:`cxr_keras.models.res2net.res2net50`. ``weights``: None (random, PyTorch-style init),
    "imagenet" (timm's ``resnet18.tv_in1k``), a ``.weights.h5`` file or a PyTorch checkpoint
    (see :mod:`cxr_keras.convert`); ``widths`` reduces the network (weights=None).
    """
    return _resnet("resnet18", include_top, weights, input_shape, pooling, classes, widths, name,
                   classifier_activation)


def resnet34(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=None,
             classes=1000, widths=WIDTHS, name="resnet34", classifier_activation=None):
    """torchvision's ResNet-34 (see :func:`resnet18` for the arguments; "imagenet" is timm's
    ``resnet34.tv_in1k``)."""
    return _resnet("resnet34", include_top, weights, input_shape, pooling, classes, widths, name,
                   classifier_activation)


def resnet18_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-18 state dict into a :func:`resnet18` model (in place)."""
    return load_state_dict(state_dict, model, "resnet18", torchvision=True, source=source)


def resnet34_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-34 state dict into a :func:`resnet34` model (in place)."""
    return load_state_dict(state_dict, model, "resnet34", torchvision=True, source=source)


FROM_STATE_DICT = {"resnet18": resnet18_from_state_dict, "resnet34": resnet34_from_state_dict}
