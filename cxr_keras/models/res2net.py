"""Res2Net-50 26w x 4s (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021)
as one functional Keras graph that reproduces the PyTorch reference layer by layer.

The design is that of the authors' Res2Net-PretrainedModels ``res2net.py`` and of timm's
``res2net50_26w_4s``: a ResNet-50 whose 3x3 convolution is replaced by ``scale`` groups of
``width`` channels with hierarchical residual connections (the Bottle2neck). PyTorch's symmetric
padding is reproduced with explicit ``ZeroPadding2D`` + "valid" convolutions and pools where Keras'
"same" differs (it pads asymmetrically at stride 2; stride-1 3x3 convolutions are "same") and
BatchNormalization uses PyTorch's epsilon (1e-5) and momentum (0.1, i.e. Keras' 0.9), so converted
PyTorch weights (:mod:`cxr_keras.convert`) give the same outputs; the checkpoint key map
(:func:`res2net50_from_state_dict`) sits at the end.

Layer names mirror the PyTorch state-dict keys: ``conv1``/``bn1`` (stem), then for stage ``i``
(1..4) and block ``j`` (0-based) ``layer{i}_{j}_conv1``, ``_bn1``, ``_convs_{k}``, ``_bns_{k}``,
``_conv3``, ``_bn3``, ``_downsample_conv``, ``_downsample_bn`` and the block output
``layer{i}_{j}_out``; ``fc`` is the classifier. :func:`stage_outputs` names each stage's output.

:func:`resnet50` is the same code with ``scale=1`` and ``base_width=64``: torchvision's ResNet-50
(v1.5, stride on the 3x3 convolution), whose ``conv2``/``bn2`` are named ``convs_0``/``bns_0`` here.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from ._resnet_blocks import bn, conv, finish, load_state_dict, load_weights, resolve_weights

EXPANSION = 4

STANDARD = {"blocks": (3, 4, 6, 3), "planes": (64, 128, 256, 512), "base_width": 26, "scale": 4,
            "stem_width": 64}


@keras.saving.register_keras_serializable(package="cxr_keras")
class ChannelSlice(keras.layers.Layer):
    """``x[..., start:stop]``: one of the Bottle2neck's channel groups (``torch.split``). The
    builder now uses :class:`ChannelSplit`; kept so that models saved before it still load."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)
        if not 0 <= self.start < self.stop:
            raise ValueError(f"ChannelSlice: need 0 <= start < stop, got {start}, {stop}")

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.stop - self.start,)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="cxr_keras")
class ChannelSplit(keras.layers.Layer):
    """The Bottle2neck's ``torch.split(x, width, 1)``: ``x`` cut into ``parts`` equal channel groups
    by one split, whose gradient is one concatenation (four :class:`ChannelSlice` cost four
    full-width zero-padded gradients and their sum: 12% of a Res2Net-50 training step on a CPU,
    ``benchmarks/profile_step.py``)."""

    def __init__(self, parts, **kwargs):
        super().__init__(**kwargs)
        self.parts = int(parts)
        if self.parts < 2:
            raise ValueError(f"ChannelSplit: parts must be at least 2, got {parts}")

    def call(self, x):
        return keras.ops.split(x, self.parts, axis=-1)

    def compute_output_shape(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] % self.parts:
            raise ValueError(f"ChannelSplit: {input_shape[-1]} channels do not split into "
                             f"{self.parts} equal parts")
        width = None if input_shape[-1] is None else input_shape[-1] // self.parts
        return [tuple(input_shape[:-1]) + (width,) for _ in range(self.parts)]

    def get_config(self):
        return {**super().get_config(), "parts": self.parts}


def _bottle2neck(x, planes, stride, first, base_width, scale, prefix):
    """One Bottle2neck; ``first`` is the stage's first block (PyTorch ``stype="stage"``)."""
    width = planes * base_width // 64
    nums = 1 if scale == 1 else scale - 1
    y = conv(x, width * scale, 1, 1, 0, f"{prefix}conv1")
    y = layers.ReLU(name=f"{prefix}relu1")(bn(y, f"{prefix}bn1"))
    if scale == 1:
        splits = [y]
    else:
        splits = list(ChannelSplit(scale, name=f"{prefix}split")(y))
    outs = []
    for k in range(nums):
        if k == 0 or first:
            sp = splits[k]
        else:  # hierarchical connection: previous group's output + this group
            sp = layers.Add(name=f"{prefix}add_{k}")([sp, splits[k]])
        sp = conv(sp, width, 3, stride, 1, f"{prefix}convs_{k}")
        sp = layers.ReLU(name=f"{prefix}relus_{k}")(bn(sp, f"{prefix}bns_{k}"))
        outs.append(sp)
    if scale > 1:
        last = splits[nums]
        if first:  # AvgPool2d(3, stride, padding=1), count_include_pad=True: padded zeros count
            last = layers.ZeroPadding2D(1, name=f"{prefix}pool_pad")(last)
            last = layers.AveragePooling2D(3, strides=stride, padding="valid",
                                           name=f"{prefix}pool")(last)
        outs.append(last)
    y = layers.Concatenate(axis=-1, name=f"{prefix}cat")(outs) if len(outs) > 1 else outs[0]
    y = bn(conv(y, planes * EXPANSION, 1, 1, 0, f"{prefix}conv3"), f"{prefix}bn3")
    shortcut = x
    if stride != 1 or x.shape[-1] != planes * EXPANSION:
        shortcut = conv(x, planes * EXPANSION, 1, stride, 0, f"{prefix}downsample_conv")
        shortcut = bn(shortcut, f"{prefix}downsample_bn")
    y = layers.Add(name=f"{prefix}residual")([y, shortcut])
    return layers.ReLU(name=f"{prefix}out")(y)


def _check_config(blocks, planes, base_width, scale, stem_width, pooling, input_shape):
    blocks, planes = tuple(int(b) for b in blocks), tuple(int(p) for p in planes)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"res2net: blocks must be four positive integers, got {blocks!r}")
    if len(planes) != 4 or min(planes) < 1:
        raise ValueError(f"res2net: planes must be four positive integers, got {planes!r}")
    if int(scale) < 1 or int(base_width) < 1 or int(stem_width) < 1:
        raise ValueError(f"res2net: scale, base_width and stem_width must be positive, got "
                         f"{scale!r}, {base_width!r}, {stem_width!r}")
    if min(planes) * int(base_width) // 64 < 1:
        raise ValueError(f"res2net: planes * base_width / 64 must be >= 1 for every stage, got "
                         f"planes={planes!r}, base_width={base_width!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"res2net: pooling must be None, 'avg' or 'max', got {pooling!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"res2net: input_shape must be (height, width, channels), got "
                         f"{input_shape!r}")
    return blocks, planes


def _build(include_top, input_shape, pooling, classes, blocks, planes, base_width, scale,
           stem_width, classifier_activation, name):
    blocks, planes = _check_config(blocks, planes, base_width, scale, stem_width, pooling,
                                   input_shape)
    inp = keras.Input(tuple(input_shape), name="image")
    x = conv(inp, int(stem_width), 7, 2, 3, "conv1")
    x = layers.ReLU(name="relu")(bn(x, "bn1"))
    # zero padding equals PyTorch's -inf padding here: the input is >= 0 after the ReLU
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    for i, (n, p) in enumerate(zip(blocks, planes), start=1):
        for j in range(n):
            stride = 2 if (i > 1 and j == 0) else 1
            x = _bottle2neck(x, p, stride, j == 0, int(base_width), int(scale), f"layer{i}_{j}_")
    return finish(inp, x, include_top, pooling, classes, classifier_activation, name)


def res2net50(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=None,
              classes=1000, blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), base_width=26,
              scale=4, stem_width=64, name="res2net50", classifier_activation=None):
    """Res2Net-50 26w x 4s (channels last); stage outputs 56x56x256 ... 7x7x2048 at 224 input.

    ``include_top`` adds global average pooling + ``Dense(classes)`` named "fc"; it outputs logits
    unless ``classifier_activation`` (e.g. "softmax") is given. ``pooling`` (None, "avg", "max")
    applies when ``include_top`` is False, as in keras.applications. ``weights``: None (random,
    PyTorch-style init), "imagenet" (timm's ``res2net50_26w_4s.in1k``, downloaded and converted;
    standard configuration only), a ``.weights.h5`` file of a model of the same configuration
    (``cxr-keras convert res2net50``), or a PyTorch checkpoint (converted on the fly). Inputs are
    RGB normalised with the ImageNet mean/std, as for the PyTorch model. ``blocks``, ``planes``,
    ``base_width``, ``scale`` and ``stem_width`` shrink the network for tests.
    """
    standard = (tuple(blocks), tuple(planes), base_width, scale, stem_width) == tuple(
        STANDARD.values())
    path = resolve_weights(weights, "res2net50", standard, include_top, classes, input_shape,
                           standard_text=str(STANDARD))
    model = _build(include_top, input_shape, pooling, classes, blocks, planes, base_width, scale,
                   stem_width, classifier_activation, name)
    return load_weights(model, path, "res2net50", include_top, res2net50_from_state_dict)


def resnet50(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=None,
             classes=1000, blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), base_width=64,
             stem_width=64, name="resnet50", classifier_activation=None):
    """torchvision's ResNet-50: :func:`res2net50` with ``scale=1`` (``base_width=64``; 128 is
    Wide ResNet-50-2).

    ``weights="imagenet"`` loads timm's ``resnet50.tv_in1k`` (torchvision's original weights);
    other arguments as for :func:`res2net50`.
    """
    standard = (tuple(blocks), tuple(planes), base_width, stem_width) == (
        (3, 4, 6, 3), (64, 128, 256, 512), 64, 64)
    path = resolve_weights(weights, "resnet50", standard, include_top, classes, input_shape)
    model = _build(include_top, input_shape, pooling, classes, blocks, planes, base_width, 1,
                   stem_width, classifier_activation, name)
    return load_weights(model, path, "resnet50", include_top, resnet50_from_state_dict)


_OUT = re.compile(r"^layer([1-4])_(\d+)_out$")


def stage_outputs(model) -> dict:
    """``{1: name, 2: name, 3: name, 4: name}``: the output layer of each stage's last block."""
    last = {}
    for layer in model.layers:
        m = _OUT.match(layer.name)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            if j >= last.get(i, (-1, ""))[0]:
                last[i] = (j, layer.name)
    missing = [i for i in (1, 2, 3, 4) if i not in last]
    if missing:
        raise ValueError(f"stage_outputs: model {model.name!r} has no block output "
                         f"'layer{{i}}_{{j}}_out' for stage(s) {missing}: not a Res2Net/ResNet "
                         f"built by cxr_keras.models.res2net")
    return {i: last[i][1] for i in (1, 2, 3, 4)}


def res2net50_from_state_dict(state_dict, model, source=None):
    """Load an official / timm Res2Net state dict into a :func:`res2net50` model (in place).

    Every missing key, unexpected key and shape mismatch is named in one DataError; ``fc.*`` is
    ignored when the model has no top. ``source`` (the checkpoint's path) prefixes messages.
    Returns ``model``.
    """
    return load_state_dict(state_dict, model, "res2net50", torchvision=False, source=source)


def resnet50_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-50 state dict into a :func:`resnet50` model (in place)."""
    return load_state_dict(state_dict, model, "resnet50", torchvision=True, source=source)
