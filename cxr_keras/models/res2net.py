"""Res2Net-50 26w x 4s (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021)
as one functional Keras graph that reproduces the PyTorch reference layer by layer.

The design is that of the authors' Res2Net-PretrainedModels ``res2net.py`` and of timm's
``res2net50_26w_4s``: a ResNet-50 whose 3x3 convolution is replaced by ``scale`` groups of
``width`` channels with hierarchical residual connections (the Bottle2neck). PyTorch's symmetric
padding is reproduced with explicit ``ZeroPadding2D`` + "valid" convolutions and pools (Keras'
"same" pads asymmetrically at stride 2) and BatchNormalization uses PyTorch's epsilon (1e-5) and
momentum (0.1, i.e. Keras' 0.9), so converted PyTorch weights (:mod:`cxr_keras.convert`) give the
same outputs.

Layer names mirror the PyTorch state-dict keys: ``conv1``/``bn1`` (stem), then for stage ``i``
(1..4) and block ``j`` (0-based) ``layer{i}_{j}_conv1``, ``_bn1``, ``_convs_{k}``, ``_bns_{k}``,
``_conv3``, ``_bn3``, ``_downsample_conv``, ``_downsample_bn`` and the block output
``layer{i}_{j}_out``; ``fc`` is the classifier. :func:`stage_outputs` names each stage's output.

:func:`resnet50` is the same code with ``scale=1`` and ``base_width=64``: torchvision's ResNet-50
(v1.5, stride on the 3x3 convolution), whose ``conv2``/``bn2`` are named ``convs_0``/``bns_0`` here.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import layers

from ..io import DataError

BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default
BN_MOMENTUM = 0.9  # Keras' momentum for PyTorch's momentum=0.1
EXPANSION = 4

STANDARD = {"blocks": (3, 4, 6, 3), "planes": (64, 128, 256, 512), "base_width": 26, "scale": 4,
            "stem_width": 64}
IMAGENET_URL = "https://huggingface.co/timm/res2net50_26w_4s.in1k/resolve/main/model.safetensors"
IMAGENET_FILE = "res2net50_26w_4s.in1k.safetensors"
RESNET50_IMAGENET_URL = "https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors"
RESNET50_IMAGENET_FILE = "resnet50.tv_in1k.safetensors"

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")

# PyTorch's default conv init in the reference (kaiming_normal_, mode="fan_out", relu)
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


@keras.saving.register_keras_serializable(package="cxr_keras")
class ChannelSlice(keras.layers.Layer):
    """``x[..., start:stop]``: one of the Bottle2neck's channel groups (``torch.split``)."""

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


def _conv(x, filters, kernel, stride, pad, name):
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                         kernel_initializer=keras.initializers.get(_CONV_INIT), name=name)(x)


def _bn(x, name):
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _bottle2neck(x, planes, stride, first, base_width, scale, prefix):
    """One Bottle2neck; ``first`` is the stage's first block (PyTorch ``stype="stage"``)."""
    width = planes * base_width // 64
    nums = 1 if scale == 1 else scale - 1
    y = _conv(x, width * scale, 1, 1, 0, f"{prefix}conv1")
    y = layers.ReLU(name=f"{prefix}relu1")(_bn(y, f"{prefix}bn1"))
    if scale == 1:
        splits = [y]
    else:
        splits = [ChannelSlice(k * width, (k + 1) * width, name=f"{prefix}split_{k}")(y)
                  for k in range(scale)]
    outs = []
    for k in range(nums):
        if k == 0 or first:
            sp = splits[k]
        else:  # hierarchical connection: previous group's output + this group
            sp = layers.Add(name=f"{prefix}add_{k}")([sp, splits[k]])
        sp = _conv(sp, width, 3, stride, 1, f"{prefix}convs_{k}")
        sp = layers.ReLU(name=f"{prefix}relus_{k}")(_bn(sp, f"{prefix}bns_{k}"))
        outs.append(sp)
    if scale > 1:
        last = splits[nums]
        if first:  # AvgPool2d(3, stride, padding=1), count_include_pad=True: padded zeros count
            last = layers.ZeroPadding2D(1, name=f"{prefix}pool_pad")(last)
            last = layers.AveragePooling2D(3, strides=stride, padding="valid",
                                           name=f"{prefix}pool")(last)
        outs.append(last)
    y = layers.Concatenate(axis=-1, name=f"{prefix}cat")(outs) if len(outs) > 1 else outs[0]
    y = _bn(_conv(y, planes * EXPANSION, 1, 1, 0, f"{prefix}conv3"), f"{prefix}bn3")
    shortcut = x
    if stride != 1 or x.shape[-1] != planes * EXPANSION:
        shortcut = _conv(x, planes * EXPANSION, 1, stride, 0, f"{prefix}downsample_conv")
        shortcut = _bn(shortcut, f"{prefix}downsample_bn")
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
    x = _conv(inp, int(stem_width), 7, 2, 3, "conv1")
    x = layers.ReLU(name="relu")(_bn(x, "bn1"))
    # zero padding equals PyTorch's -inf padding here: the input is >= 0 after the ReLU
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    for i, (n, p) in enumerate(zip(blocks, planes), start=1):
        for j in range(n):
            stride = 2 if (i > 1 and j == 0) else 1
            x = _bottle2neck(x, p, stride, j == 0, int(base_width), int(scale), f"layer{i}_{j}_")
    return _finish(inp, x, include_top, pooling, classes, classifier_activation, name)


def _finish(inp, x, include_top, pooling, classes, classifier_activation, name):
    """Global pooling and the ``fc`` classifier (PyTorch's nn.Linear init) of a ResNet."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
        bound = 1.0 / float(x.shape[-1]) ** 0.5  # PyTorch's nn.Linear default init
        x = layers.Dense(int(classes), activation=classifier_activation,
                         kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                         bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                         name="fc")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="global_maxpool")(x)
    return keras.Model(inp, x, name=name)


def _resolve_weights(weights, arch, url, fname, standard, include_top, classes, input_shape):
    """Check ``weights`` before building; returns None, or the file to load (downloaded for
    "imagenet")."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        if not standard:
            raise ValueError(f"{arch}: weights='imagenet' needs the standard configuration "
                             f"{STANDARD if arch == 'res2net50' else 'of ' + arch}; use "
                             f"weights=None for a reduced network")
        if tuple(input_shape)[-1] != 3:
            raise ValueError(f"{arch}: weights='imagenet' needs 3 input channels, got "
                             f"input_shape={tuple(input_shape)}")
        if include_top and classes != 1000:
            raise ValueError(f"{arch}: weights='imagenet' with include_top=True needs "
                             f"classes=1000, got {classes}")
        try:
            return Path(keras.utils.get_file(fname=fname, origin=url, cache_subdir="cxr_keras"))
        except Exception as e:  # get_file raises a bare Exception on network errors
            raise DataError(
                f"{arch}: cannot download the ImageNet weights from {url} ({e}). Download that "
                f"file (or the official PyTorch checkpoint) by hand, convert it with "
                f"`cxr-keras convert {arch} CHECKPOINT --out FILE.weights.h5` and pass "
                f"weights='FILE.weights.h5'") from e
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{arch}: weights file not found: {path} (weights= takes None, "
                        f"'imagenet', a .weights.h5 file or a PyTorch checkpoint)")
    if not path.name.endswith(CHECKPOINT_SUFFIXES + (".weights.h5",)):
        raise DataError(f"{arch}: weights file {path} must end with .weights.h5 or be a PyTorch "
                        f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    return path


def _load_weights(model, path, arch, include_top):
    """Load a ``.weights.h5`` file or convert a PyTorch checkpoint into ``model``."""
    from .. import convert

    if path is None:
        return model
    if path.name.endswith(CHECKPOINT_SUFFIXES):
        return convert.FROM_STATE_DICT[arch](convert.read_state_dict(path), model, source=path)
    try:
        model.load_weights(path)
    except Exception as e:
        raise DataError(f"{arch}: cannot load weights file {path} into {model.name} "
                        f"(include_top={include_top}; the file must come from a model of the "
                        f"same configuration, e.g. `cxr-keras convert {arch}`): {e}") from e
    return model


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
    path = _resolve_weights(weights, "res2net50", IMAGENET_URL, IMAGENET_FILE, standard,
                            include_top, classes, input_shape)
    model = _build(include_top, input_shape, pooling, classes, blocks, planes, base_width, scale,
                   stem_width, classifier_activation, name)
    return _load_weights(model, path, "res2net50", include_top)


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
    path = _resolve_weights(weights, "resnet50", RESNET50_IMAGENET_URL, RESNET50_IMAGENET_FILE,
                            standard, include_top, classes, input_shape)
    model = _build(include_top, input_shape, pooling, classes, blocks, planes, base_width, 1,
                   stem_width, classifier_activation, name)
    return _load_weights(model, path, "resnet50", include_top)


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
