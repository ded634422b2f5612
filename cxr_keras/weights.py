"""Pretrained weights, in one table: architecture -> where its ImageNet weights come from, the
file they are cached as, and the converter (beside its model) that loads them.

Our own Res2Net / ResNet / ViT builders load timm's PyTorch checkpoints (``.safetensors``),
converted on the fly; DenseNet121 and EfficientNet-B0 take Keras' own ImageNet files through
``keras.applications`` (not listed: Keras knows their addresses).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .io import DataError

_TIMM = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"


@dataclass(frozen=True)
class Pretrained:
    """``url`` of the checkpoint, ``file`` it is cached as (``~/.keras/cxr_keras/``), and
    ``converter``: ``"module:function"`` loading a state dict into the model, imported when
    used (models import this table; the table never imports models)."""
    url: str
    file: str
    converter: str


IMAGENET = {
    "res2net50": Pretrained(_TIMM.format("res2net50_26w_4s.in1k"),
                            "res2net50_26w_4s.in1k.safetensors",
                            "cxr_keras.models.res2net:res2net50_from_state_dict"),
    "resnet50": Pretrained(_TIMM.format("resnet50.tv_in1k"), "resnet50.tv_in1k.safetensors",
                           "cxr_keras.models.res2net:resnet50_from_state_dict"),
    "resnet18": Pretrained(_TIMM.format("resnet18.tv_in1k"), "resnet18.tv_in1k.safetensors",
                           "cxr_keras.models.resnet:resnet18_from_state_dict"),
    "resnet34": Pretrained(_TIMM.format("resnet34.tv_in1k"), "resnet34.tv_in1k.safetensors",
                           "cxr_keras.models.resnet:resnet34_from_state_dict"),
    "vit_small": Pretrained(_TIMM.format("deit_small_patch16_224.fb_in1k"),
                            "deit_small_patch16_224.fb_in1k.safetensors",
                            "cxr_keras.models.vit:vit_from_state_dict"),
}


def converter(arch: str):
    """The function ``(state_dict, model, source=None) -> model`` of ``arch``."""
    if arch not in IMAGENET:
        raise DataError(f"unknown architecture {arch!r}; known: {', '.join(IMAGENET)}")
    module, _, name = IMAGENET[arch].converter.partition(":")
    return getattr(importlib.import_module(module), name)


def download(arch: str, hint: str = "") -> Path:
    """The cached ImageNet checkpoint of ``arch`` (downloaded once by Keras' ``get_file``);
    a failed download names the address and what to do instead (``hint``)."""
    import keras

    entry = IMAGENET[arch]
    try:
        return Path(keras.utils.get_file(fname=entry.file, origin=entry.url,
                                         cache_subdir="cxr_keras"))
    except Exception as e:  # get_file raises a bare Exception on network errors
        raise DataError(f"{arch}: cannot download the ImageNet weights from {entry.url} ({e}). "
                        f"Download that file by hand{hint}") from e


def weights_for(spec: str | None, arch: str, option: str = "--imagenet-weights") -> str | None:
    """``arch``'s weights in a specification naming them for several architectures: None,
    "imagenet" (download) or one file for every architecture, or "ARCH=FILE,ARCH=FILE" (an error
    naming ``option`` where ``arch`` has no file)."""
    if spec is None or "=" not in spec:
        return spec
    pairs = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    if arch not in pairs:
        raise DataError(f"{option} {spec!r} names no file for {arch}")
    return pairs[arch]
