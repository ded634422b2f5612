"""mtpret's task heads on a shared multi-scale backbone (:func:`cxr_keras.models.backbones.
multiscale_backbone`): FC for classification, DeepLab-V3 for segmentation. Every task model is
``image -> head(backbone(image))`` built on the *same* backbone model, so training any task moves
the shared weights (multitask continual learning).

- FC: global average pooling of C5 and one Dense layer giving logits (sigmoid / BCE for binary and
  multi-label tasks, softmax / CE for multi-class, as the paper).
- DeepLab-V3 (Chen et al. 2017): ASPP on C5 -- a 1x1 convolution, three 3x3 atrous convolutions
  and image pooling, each 256 wide with BN and ReLU, concatenated, projected by a 1x1 convolution
  (256, BN, ReLU), a 3x3 convolution (256, BN, ReLU) and a 1x1 classifier; the logits are
  upsampled bilinearly by the backbone's stride to the input size. DeepLab-V3's rates 6, 12, 18
  are those of output stride 16 (doubled at 8); CHOICE: the backbone keeps its stride 32 (no
  dilated last stage, so that every task shares one unchanged backbone; torchvision's BasicBlock
  of ResNet-18/34 has no dilation either), and the rates are scaled to the stride of the map the
  head reads (:func:`aspp_rates`: 3, 6, 9 on C5), so that the taps cover the same image extent.
"""

from __future__ import annotations

import keras
from keras import layers

from ..layers.batch_norm import FusedBatchNormalization


def fc_head(features, num_outputs: int, name: str = "fc"):
    """Logits ``(batch, num_outputs)`` from the last feature map."""
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features[-1])
    return layers.Dense(int(num_outputs), name=name)(x)


def _conv_bn_relu(x, filters, kernel, rate, name):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False,
                      name=f"{name}_conv")(x)
    x = FusedBatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


DEEPLAB_RATES = (6, 12, 18)  # DeepLab-V3's ASPP rates at output stride 16


def aspp_rates(output_stride: int, rates=DEEPLAB_RATES) -> tuple:
    """DeepLab-V3's ASPP ``rates`` (given at output stride 16; it doubles them at stride 8) at
    ``output_stride``: ``r * 16 / output_stride`` rounded, at least 1 (3, 6, 9 at stride 32)."""
    return tuple(max(1, int(round(r * 16 / int(output_stride)))) for r in rates)


def deeplabv3_head(features, num_classes: int, input_size, rates=None, filters: int = 256,
                   name: str = "deeplab", level: int = -1):
    """Segmentation logits ``(batch, H, W, num_classes)`` at the input size ``(H, W)``, from the
    feature map ``features[level]`` (default C5; an earlier map gives a finer output stride on
    small inputs, where C5 is a few cells wide). ``rates``: the atrous rates; ``None``:
    DeepLab-V3's scaled to the map's stride (:func:`aspp_rates`)."""
    c5 = features[level]
    h, w = int(c5.shape[1]), int(c5.shape[2])
    size = (int(input_size[0]), int(input_size[1]))
    if size[0] % h or size[1] % w:
        raise ValueError(f"{name}: input {size} is not a multiple of the feature map {h}x{w}")
    if rates is None:
        rates = aspp_rates(size[0] // h)
    branches = [_conv_bn_relu(c5, filters, 1, 1, f"{name}_aspp0")]
    for i, r in enumerate(rates, start=1):
        branches.append(_conv_bn_relu(c5, filters, 3, int(r), f"{name}_aspp{i}"))
    pool = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_imagepool")(c5)
    pool = _conv_bn_relu(pool, filters, 1, 1, f"{name}_imagepool")
    branches.append(layers.UpSampling2D((h, w), name=f"{name}_imagepool_up")(pool))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = _conv_bn_relu(x, filters, 1, 1, f"{name}_project")
    x = _conv_bn_relu(x, filters, 3, 1, f"{name}_head")
    x = layers.Conv2D(int(num_classes), 1, name=f"{name}_classifier")(x)
    return layers.UpSampling2D((size[0] // h, size[1] // w), interpolation="bilinear",
                               name=f"{name}_upsample")(x)


def task_model(backbone, kind: str, num_outputs: int, name: str, **head_options):
    """``image -> logits`` for one task on the shared ``backbone`` (image -> [C2..C5]).
    ``kind``: "classification" (FC) or "segmentation" (DeepLab-V3)."""
    inp = keras.Input(backbone.input.shape[1:], name=f"{name}_image")
    features = backbone(inp)
    if kind == "classification":
        out = fc_head(features, num_outputs, name=f"{name}_fc", **head_options)
    elif kind == "segmentation":
        out = deeplabv3_head(features, num_outputs, backbone.input.shape[1:3],
                             name=f"{name}_deeplab", **head_options)
    else:
        raise ValueError(f"task kind must be 'classification' or 'segmentation', got {kind!r} "
                         "(detection: cxr_keras.models.faster_rcnn)")
    return keras.Model(inp, out, name=name)
