"""``cxr-keras convert``: PyTorch checkpoints -> Keras ``.weights.h5`` files for the Res2Net /
ResNet / ViT backbones.

Each architecture's checkpoint key map sits beside its model (``res2net50_from_state_dict`` in
:mod:`cxr_keras.models.res2net`, ``resnet18/34_from_state_dict`` in :mod:`cxr_keras.models.resnet`,
``vit_from_state_dict`` in :mod:`cxr_keras.models.vit`); checkpoint files are read by
:mod:`cxr_keras.state_dict`; where ImageNet weights come from is :mod:`cxr_keras.weights`. This
module imports the models, never the reverse. Layouts: conv ``(out, in, kh, kw)`` ->
``(kh, kw, in, out)``, linear ``(out, in)`` -> ``(in, out)``, BatchNorm weight / bias /
running_mean / running_var -> gamma / beta / moving_mean / moving_variance.

    cxr-keras convert resnet34|vit_small|... CHECKPOINT --out FILE.weights.h5 [--include-top]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import models
from .integrity import checksummed_path
from .io import DataError
from .models.res2net import res2net50_from_state_dict, resnet50_from_state_dict
from .models.resnet import resnet18_from_state_dict, resnet34_from_state_dict
from .models.vit import vit_from_state_dict, vit_imagenet
from .state_dict import read_state_dict, write_safetensors

__all__ = ["FROM_STATE_DICT", "convert_checkpoint", "convert_res2net50", "read_state_dict",
           "write_safetensors", "res2net50_from_state_dict", "resnet50_from_state_dict",
           "resnet18_from_state_dict", "resnet34_from_state_dict", "vit_from_state_dict",
           "vit_imagenet"]

FROM_STATE_DICT = {"res2net50": res2net50_from_state_dict, "resnet50": resnet50_from_state_dict,
                   "resnet18": resnet18_from_state_dict, "resnet34": resnet34_from_state_dict,
                   "vit_small": vit_from_state_dict}


def convert_checkpoint(arch, checkpoint, out, include_top=False) -> Path:
    """Convert a PyTorch ``checkpoint`` of ``arch`` (a key of :data:`FROM_STATE_DICT`) to a Keras
    ``.weights.h5`` file ``out`` (atomic); with ``include_top`` the classifier is kept and its
    class count taken from ``fc.weight``. Returns ``out``."""
    if arch not in FROM_STATE_DICT:
        raise DataError(f"unknown architecture {arch!r}; known: {', '.join(FROM_STATE_DICT)}")
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise DataError(f"--out {out}: a Keras weights file name must end with .weights.h5")
    state_dict = read_state_dict(checkpoint)
    top = "head.weight" if arch == "vit_small" else "fc.weight"
    classes = 1000
    if include_top:
        if top not in state_dict:
            raise DataError(f"{checkpoint}: include_top=True but the checkpoint has no {top}")
        classes = int(np.shape(state_dict[top])[0])
    if arch == "vit_small":  # learned positions (timm / DeiT); the file loads into either kind
        model = models.vit_small(include_top=include_top, num_classes=classes,
                                 pooling="cls" if include_top else None, positional="learned")
    else:
        model = getattr(models, arch)(include_top=include_top, weights=None, classes=classes)
    FROM_STATE_DICT[arch](state_dict, model, source=checkpoint)
    with checksummed_path(out, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return out


def convert_res2net50(checkpoint, out, include_top=False) -> Path:
    """Convert an official / timm Res2Net-50 26w x 4s checkpoint to a Keras ``.weights.h5``."""
    return convert_checkpoint("res2net50", checkpoint, out, include_top)
