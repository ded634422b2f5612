"""MLRFNet (Li et al., IEEE Access 2023, Sec. III, Fig. 2): backbone -> ECA on U2, U3, U4 ->
multi-level residual feature classifier (one CSRA per level) -> P_sum = P1 + P2 + P3 (logits).

One flat functional graph built on the backbone's input, so every backbone layer stays reachable by
name. Layers of the head: ``eca_u2``/``eca_u3``/``eca_u4`` (eq. 1), ``csra_u2``/``csra_u3``/
``csra_u4`` (eq. 2, lambda 0.5 / 0.3 / 0.1, T = 99), ``logits`` (the sum). The ablations of
Tables 9-10 are arguments: ``use_eca=False`` drops the ECA modules; ``use_mrfc=False`` replaces
MRFC by global average pooling + a fully connected layer on U4; ``backbone`` is "res2net50"
(paper), "resnet50" or "densenet121".

Backbones and their U2 / U3 / U4 (28x28, 14x14, 7x7 at 224 input):

- ``res2net50``: Res2Net-50 26w x 4s, the last block of stages 2, 3, 4 (512, 1024, 2048 channels).
- ``resnet50``: the same code with scale 1 and base width 64, which is exactly torchvision's
  ResNet-50 (v1.5: stride on the 3x3 conv) -- the backbone a PyTorch paper used -- with ImageNet
  weights converted from torchvision's checkpoint (:mod:`cxr_keras.convert`). Keras' own ResNet50
  expects Caffe preprocessing, which the rest of this pipeline does not use.
- ``densenet121``: keras.applications' DenseNet121 (torch-style ImageNet normalisation, like ours);
  the outputs of dense blocks 2 and 3 before their transitions (512 and 1024 channels) and the
  final ReLU (1024 channels).
"""

from __future__ import annotations

import keras
from keras import layers

from ..layers import CSRA, ECA
from ._densenet import densenet
from .batchnorm import with_fused_batch_norm
from .res2net import res2net50, stage_outputs

BACKBONES = ("res2net50", "resnet50", "densenet121")
LEVELS = ("u2", "u3", "u4")


def _densenet(weights, input_shape, blocks=(6, 12, 24, 16)):
    blocks = tuple(blocks)
    if blocks == (6, 12, 24, 16):
        base = with_fused_batch_norm(keras.applications.DenseNet121(
            include_top=False, weights=weights, input_shape=input_shape))
    else:  # reduced DenseNet for quick runs and tests (same design, fewer layers per block)
        if weights is not None:
            raise ValueError("a reduced DenseNet has no pretrained weights: use weights=None")
        base = densenet(blocks, input_shape=input_shape)
    names = (f"conv3_block{blocks[1]}_concat", f"conv4_block{blocks[2]}_concat", "relu")
    return base, names


def build_backbone(backbone="res2net50", weights="imagenet", input_shape=(224, 224, 3),
                   options=None):
    """(backbone model, names of its U2, U3, U4 layers). ``options`` reduce the network for quick
    runs: ``blocks``/``planes``/``base_width``/``stem_width`` for the Res2Net family, ``blocks``
    for DenseNet; reduced networks take ``weights=None``."""
    options = dict(options or {})
    input_shape = tuple(input_shape)
    if backbone == "res2net50":
        base = res2net50(include_top=False, weights=weights, input_shape=input_shape, **options)
    elif backbone == "resnet50":
        from .res2net import resnet50

        base = resnet50(include_top=False, weights=weights, input_shape=input_shape, **options)
    elif backbone == "densenet121":
        return _densenet(weights, input_shape, **options)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    names = stage_outputs(base)
    return base, (names[2], names[3], names[4])


def mlrfnet(num_classes=14, backbone="res2net50", use_eca=True, use_mrfc=True,
            lambdas=(0.5, 0.3, 0.1), temperature=99, eca_kernel=3, csra_normalize=False,
            weights="imagenet", input_shape=(224, 224, 3), backbone_options=None, name="mlrfnet"):
    """Build MLRFNet; outputs logits P_sum of shape (N, num_classes) (float32).

    Args:
        lambdas: CSRA residual weights for U2, U3, U4 (paper: 0.5, 0.3, 0.1, Fig. 6).
        temperature: CSRA temperature T (paper 99, a literal softmax; ``"max"`` gives CSRA's code
            behaviour, which treats 99 as max pooling).
        csra_normalize: divide each class score by its 1x1 weight norm (CSRA's code; the MLRFNet
            paper does not mention it).
        weights: backbone weights: ``"imagenet"``, ``None`` or a local backbone weights file.
        backbone_options: reduce the backbone (see :func:`build_backbone`).
    """
    if len(lambdas) != 3:
        raise ValueError(f"lambdas must hold three values (U2, U3, U4), got {lambdas!r}")
    base, feature_names = build_backbone(backbone, weights, input_shape, backbone_options)
    feats = [base.get_layer(n).output for n in feature_names]
    if use_eca:
        levels = (LEVELS if use_mrfc else LEVELS[-1:])
        feats = feats if use_mrfc else feats[-1:]
        feats = [ECA(eca_kernel, name=f"eca_{lv}")(f) for lv, f in zip(levels, feats)]
    else:
        feats = feats if use_mrfc else feats[-1:]
    if use_mrfc:
        scores = [CSRA(num_classes, lam, temperature=temperature, normalize=csra_normalize,
                       name=f"csra_{lv}", dtype="float32")(f)
                  for lv, lam, f in zip(LEVELS, lambdas, feats)]
        out = layers.Add(name="logits", dtype="float32")(scores)
    else:
        x = layers.GlobalAveragePooling2D(name="gap")(feats[-1])
        out = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(base.input, out, name=name)


def gradcam_layers(model) -> dict:
    """Feature maps Grad-CAM can read, by level (``u2``, ``u3``, ``u4``): the ECA output when
    present, else the backbone map that feeds the level's CSRA (or, without MRFC, the GAP)."""
    names = {layer.name for layer in model.layers}
    out = {}
    for lv in LEVELS:
        if f"eca_{lv}" in names:
            out[lv] = f"eca_{lv}"
            continue
        head = (f"csra_{lv}" if f"csra_{lv}" in names else
                "gap" if lv == "u4" and "gap" in names else None)
        if head is None:
            continue
        tensor = model.get_layer(head).input
        out[lv] = next(c.name for c in model.layers if c.output is tensor)
    return out
