"""What our torchvision-style ResNets share (``res2net.py``: Res2Net-50 and ResNet-50;
``resnet.py``: ResNet-18/34): PyTorch's padding and BatchNorm, the ``fc`` head, the ``weights``
argument, and the map from our layer names to PyTorch state-dict keys
(``layer1_0_convs_2`` -> ``layer1.0.convs.2``).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import layers

from .. import weights as pretrained
from ..integrity import verify
from ..io import DataError
from ..layers.batch_norm import FusedBatchNormalization
from ..state_dict import CHECKPOINT_SUFFIXES, assign, read_state_dict

BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default
BN_MOMENTUM = 0.9  # Keras' momentum for PyTorch's momentum=0.1

# PyTorch's default conv init in the reference (kaiming_normal_, mode="fan_out", relu)
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


def conv(x, filters, kernel, stride, pad, name):
    """PyTorch's ``Conv2d(kernel, stride, padding=pad, bias=False)``: symmetric zero padding.
    At stride 1 with ``pad = kernel // 2`` (odd kernel) that is Keras' "same"; otherwise (stride 2:
    "same" would pad only the bottom / right) an explicit ``ZeroPadding2D`` before a "valid" conv."""
    same = stride == 1 and kernel % 2 == 1 and pad == kernel // 2
    if pad and not same:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="same" if same else "valid",
                         use_bias=False, kernel_initializer=keras.initializers.get(_CONV_INIT),
                         name=name)(x)


def bn(x, name):
    return FusedBatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def finish(inp, x, include_top, pooling, classes, classifier_activation, name):
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


def resolve_weights(weights, arch, standard, include_top, classes, input_shape,
                    standard_text=None):
    """Check ``weights`` before building; returns None, or the file to load (downloaded for
    "imagenet", from :data:`cxr_keras.weights.IMAGENET`)."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        if not standard:
            raise ValueError(f"{arch}: weights='imagenet' needs the standard configuration "
                             f"{standard_text or 'of ' + arch}; use weights=None for a reduced "
                             "network")
        if tuple(input_shape)[-1] != 3:
            raise ValueError(f"{arch}: weights='imagenet' needs 3 input channels, got "
                             f"input_shape={tuple(input_shape)}")
        if include_top and classes != 1000:
            raise ValueError(f"{arch}: weights='imagenet' with include_top=True needs "
                             f"classes=1000, got {classes}")
        return pretrained.download(
            arch, f" (or the official PyTorch checkpoint), convert it with `cxr-keras convert "
                  f"{arch} CHECKPOINT --out FILE.weights.h5` and pass weights='FILE.weights.h5'")
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{arch}: weights file not found: {path} (weights= takes None, "
                        f"'imagenet', a .weights.h5 file or a PyTorch checkpoint)")
    if not path.name.endswith(CHECKPOINT_SUFFIXES + (".weights.h5",)):
        raise DataError(f"{arch}: weights file {path} must end with .weights.h5 or be a PyTorch "
                        f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    return path


def load_weights(model, path, arch, include_top, from_state_dict):
    """Load a ``.weights.h5`` file, or convert a PyTorch checkpoint with ``from_state_dict``."""
    if path is None:
        return model
    if path.name.endswith(CHECKPOINT_SUFFIXES):
        return from_state_dict(read_state_dict(path), model, source=path)
    try:
        model.load_weights(verify(path))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{arch}: cannot load weights file {path} into {model.name} "
                        f"(include_top={include_top}; the file must come from a model of the "
                        f"same configuration, e.g. `cxr-keras convert {arch}`): {e}") from e
    return model


_BLOCK = re.compile(r"^layer(\d+)_(\d+)_(conv1|bn1|conv2|bn2|conv3|bn3|convs_\d+|bns_\d+|"
                    r"downsample_conv|downsample_bn)$")
_TORCHVISION = {"convs.0": "conv2", "bns.0": "bn2"}


def _module_name(layer_name, torchvision=False):
    """The PyTorch module of a Keras layer (``layer1_0_convs_2`` -> ``layer1.0.convs.2``)."""
    if layer_name in ("conv1", "bn1", "fc"):
        return layer_name
    m = _BLOCK.match(layer_name)
    if m is None:
        return None
    part = m.group(3)
    part = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part)
    part = re.sub(r"^(convs|bns)_(\d+)$", r"\1.\2", part)
    if torchvision:
        part = _TORCHVISION.get(part, part)
    return f"layer{m.group(1)}.{m.group(2)}.{part}"


def _targets(layer, module):
    """``[(state-dict key, variable, transform)]`` of one Keras layer."""
    if isinstance(layer, keras.layers.Conv2D):
        out = [(f"{module}.weight", layer.kernel, lambda a: a.transpose(2, 3, 1, 0))]
        if layer.use_bias:
            out.append((f"{module}.bias", layer.bias, None))
        return out
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(f"{module}.weight", layer.gamma, None), (f"{module}.bias", layer.beta, None),
                (f"{module}.running_mean", layer.moving_mean, None),
                (f"{module}.running_var", layer.moving_variance, None)]
    if isinstance(layer, keras.layers.Dense):
        return [(f"{module}.weight", layer.kernel, lambda a: a.T),
                (f"{module}.bias", layer.bias, None)]
    raise DataError(f"no PyTorch mapping for layer {layer.name!r} ({type(layer).__name__})")


def load_state_dict(state_dict, model, arch, torchvision, source=None):
    """Load a PyTorch ResNet-family state dict into ``model`` (in place): official / timm
    Res2Net keys, or torchvision's (``torchvision=True``: ``conv2``/``bn2`` for our
    ``convs_0``/``bns_0``). ``fc.*`` is ignored when the model has no top; every missing key,
    unexpected key and shape mismatch is named in one DataError."""
    where = f"{source}: " if source is not None else ""
    targets = []
    for layer in model.layers:
        if not layer.weights:
            continue
        module = _module_name(layer.name, torchvision)
        if module is None:
            raise DataError(f"{where}{arch}: model {model.name!r} has layer {layer.name!r} with "
                            f"weights that is not part of {arch}")
        targets += _targets(layer, module)
    ignored = {k for k in state_dict if k.endswith(".num_batches_tracked")}
    if not any(layer.name == "fc" for layer in model.layers):
        ignored |= {"fc.weight", "fc.bias"}
    return assign(state_dict, targets, model, arch, source, ignored)
