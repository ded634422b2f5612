"""PyTorch checkpoints -> Keras weights for the Res2Net / ResNet / ViT backbones.

:func:`read_state_dict` reads ``.safetensors`` (NumPy only), ``.npz`` and, when PyTorch is
installed, ``.pth``/``.pt``/``.bin``. :func:`res2net50_from_state_dict` maps the official / timm
Res2Net keys (``layer1.0.convs.0.weight`` ...) onto :func:`cxr_keras.models.res2net.res2net50`,
whose layer names mirror them; :func:`resnet50_from_state_dict`, :func:`resnet18_from_state_dict`
and :func:`resnet34_from_state_dict` do the same for torchvision's ResNets (:data:`FROM_STATE_DICT`
by architecture). Layouts: conv ``(out, in, kh, kw)`` -> ``(kh, kw, in, out)``, linear
``(out, in)`` -> ``(in, out)``, BatchNorm weight / bias / running_mean / running_var -> gamma /
beta / moving_mean / moving_variance (``num_batches_tracked`` is ignored).
:func:`vit_from_state_dict` maps timm / DeiT / MAE ViT keys (``blocks.0.attn.qkv.weight`` ...)
onto :func:`cxr_keras.models.vit.vit` (``block_0`` / ``attn_qkv``), resizing the positional
embedding to the model's patch grid; :func:`vit_imagenet` is DeiT-S (ImageNet-1k).

    cxr-keras convert resnet34|vit_small|... CHECKPOINT --out FILE.weights.h5 [--include-top]
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from .io import DataError, atomic_path

# safetensors dtype -> (NumPy dtype of the stored bytes, itemsize)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_NP_TO_ST = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
             np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
             np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def _read_safetensors(path):
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise DataError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise DataError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a safetensors file (bad JSON header: {e})") from e
    buf = memoryview(data)[8 + n:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: bad safetensors header entry for {key!r}: {info!r}") from e
        if dtype not in _ST_DTYPES:
            raise DataError(f"{path}: tensor {key!r} has unsupported dtype {dtype} (supported: "
                            f"{', '.join(_ST_DTYPES)})")
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(buf) or end - begin != count * np.dtype(_ST_DTYPES[dtype]).itemsize:
            raise DataError(f"{path}: tensor {key!r} has bad data offsets {[begin, end]} for "
                            f"shape {list(shape)} {dtype} (buffer {len(buf)} bytes)")
        arr = np.frombuffer(buf[begin:end], dtype=_ST_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":  # the upper half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            arr = arr.astype(np.float32)
        out[key] = np.array(arr, dtype=arr.dtype.newbyteorder("="))
    return out


def _read_torch(path):
    try:
        import torch
    except ImportError as e:
        raise DataError(f"{path}: reading a PyTorch pickle ({', '.join(TORCH_SUFFIXES)}) needs "
                        f"torch (pip install torch), or convert from the model's .safetensors "
                        f"file instead") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: torch.load(weights_only=True) failed: {e}") from e
    obj = _unwrap(obj, path)
    out = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        out[key] = value.numpy()
    return out


def _unwrap(obj, path):
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                        f"{type(obj).__name__}")
    return obj


def read_state_dict(path) -> dict:
    """``{key: np.ndarray}`` from a ``.safetensors``, ``.npz`` or (with torch) ``.pth/.pt/.bin``.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped, a leading ``module.``
    (DataParallel) is stripped, F16/BF16 become float32.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        sd = _read_safetensors(path)
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            sd = {k: z[k] for k in z.files}
    elif name.endswith(TORCH_SUFFIXES):
        sd = _read_torch(path)
    else:
        raise DataError(f"{path}: unknown checkpoint format (expected .safetensors, .npz, "
                        f"{', '.join(TORCH_SUFFIXES)})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def write_safetensors(state_dict, path) -> Path:
    """Write ``{key: array}`` as a ``.safetensors`` file (NumPy only, atomic)."""
    header, chunks, offset = {}, [], 0
    for key in sorted(state_dict):
        arr = np.asarray(state_dict[key])
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # keeps 0-d arrays 0-d
        if arr.dtype not in _NP_TO_ST:
            raise DataError(f"write_safetensors: {key!r} has unsupported dtype {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format allows trailing spaces; keeps the data aligned
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for raw in chunks:
                f.write(raw)
    return path


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
    import keras

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


def _load_state_dict(state_dict, model, torchvision, arch, source):
    where = f"{source}: " if source is not None else ""
    assign, missing, mismatched, used = [], [], [], set()
    for layer in model.layers:
        if not layer.weights:
            continue
        module = _module_name(layer.name, torchvision)
        if module is None:
            raise DataError(f"{where}{arch}: model {model.name!r} has layer {layer.name!r} with "
                            f"weights that is not part of {arch}")
        for key, var, transform in _targets(layer, module):
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            if transform is not None and value.ndim == len(var.shape):
                value = transform(value)
            if tuple(value.shape) != tuple(var.shape):
                torch_shape = tuple(np.asarray(state_dict[key]).shape)
                expected = tuple(var.shape)
                if transform is not None and len(expected) in (2, 4):
                    expected = expected[::-1] if len(expected) == 2 else (
                        expected[3], expected[2], expected[0], expected[1])
                mismatched.append(f"{key}: checkpoint {torch_shape}, model expects {expected}")
                continue
            assign.append((var, value))
    has_top = any(layer.name == "fc" for layer in model.layers)
    ignored = {k for k in state_dict if k.endswith(".num_batches_tracked")}
    if not has_top:
        ignored |= {"fc.weight", "fc.bias"}
    unexpected = sorted(set(state_dict) - used - ignored)
    _raise_if_bad(where, arch, model, missing, unexpected, mismatched)
    for var, value in assign:
        var.assign(value.astype(var.dtype))
    return model


def _raise_if_bad(where, arch, model, missing, unexpected, mismatched):
    """One DataError naming every missing key, unexpected key and shape mismatch."""
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise DataError(f"{where}checkpoint does not match {arch} model {model.name!r}: "
                        + " | ".join(parts))


def res2net50_from_state_dict(state_dict, model, source=None):
    """Load an official / timm Res2Net state dict into a :func:`res2net50` model (in place).

    Every missing key, unexpected key and shape mismatch is named in one DataError; ``fc.*`` is
    ignored when the model has no top. ``source`` (the checkpoint's path) prefixes messages.
    Returns ``model``.
    """
    return _load_state_dict(state_dict, model, False, "res2net50", source)


def resnet50_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-50 state dict into a :func:`resnet50` model (in place)."""
    return _load_state_dict(state_dict, model, True, "resnet50", source)


def resnet18_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-18 state dict into a :func:`resnet18` model (in place)."""
    return _load_state_dict(state_dict, model, True, "resnet18", source)


def resnet34_from_state_dict(state_dict, model, source=None):
    """Load a torchvision / timm ResNet-34 state dict into a :func:`resnet34` model (in place)."""
    return _load_state_dict(state_dict, model, True, "resnet34", source)


# ---------------------------------------------------------------------------------------- ViT

VIT_URL = "https://huggingface.co/timm/deit_small_patch16_224.fb_in1k/resolve/main/model.safetensors"
# keys of an MAE pretraining checkpoint that a classifier does not use
_VIT_IGNORED = ("decoder_", "mask_token")


def _resize_positions(pos, grid_hw, source):
    """(1, 1 + n, D) positional embedding -> (1, 1 + gh * gw, D), bicubic over the patch grid
    (the CLS position is kept), for a model at another input size than the checkpoint."""
    import cv2

    n = pos.shape[1] - 1
    side = int(round(n ** 0.5))
    if side * side != n:
        raise DataError(f"{source}: pos_embed has {n} patch positions, not a square grid")
    grid = pos[0, 1:].reshape(side, side, -1).astype(np.float32)
    out = cv2.resize(grid, (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_CUBIC)
    return np.concatenate([pos[:, :1], out.reshape(1, -1, pos.shape[-1])], axis=1)


def vit_from_state_dict(state_dict, model, source=None):
    """Load a timm / DeiT / MAE ViT state dict into a :func:`cxr_keras.models.vit` model (in place).

    Keys: ``cls_token``, ``pos_embed`` (resized bicubic when the model's patch grid differs),
    ``patch_embed.proj``, ``blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``,
    ``norm`` and ``head`` (used only when the model has one). An MAE pretraining checkpoint's
    decoder and mask token are ignored. Every missing key, unexpected key and shape mismatch is
    named in one DataError. Returns ``model``.
    """

    from .models.vit import TransformerBlock

    where = f"{source}: " if source is not None else ""
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    targets = []  # (key, variable, transform)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name == "patch_embed":
            targets += [("patch_embed.proj.weight", layer.proj.kernel, lambda a: a.transpose(2, 3, 1, 0)),
                        ("patch_embed.proj.bias", layer.proj.bias, None)]
        elif layer.name == "embedding":
            if "pos_embed" in sd and sd["pos_embed"].shape != tuple(layer.pos_embed.shape):
                sd["pos_embed"] = _resize_positions(sd["pos_embed"], layer.grid_hw, source)
            targets += [("cls_token", layer.cls_token, None), ("pos_embed", layer.pos_embed, None)]
        elif isinstance(layer, TransformerBlock) and layer.name.startswith("block_"):
            i = layer.name.split("_")[1]
            for sub, key in ((layer.norm1, "norm1"), (layer.qkv, "attn.qkv"),
                             (layer.proj, "attn.proj"), (layer.norm2, "norm2"),
                             (layer.fc1, "mlp.fc1"), (layer.fc2, "mlp.fc2")):
                targets += _vit_targets(sub, f"blocks.{i}.{key}")
        elif layer.name in ("norm", "head"):
            targets += _vit_targets(layer, layer.name)
        else:
            raise DataError(f"{where}vit: model {model.name!r} has layer {layer.name!r} with "
                            "weights that is not part of a ViT")
    assign, missing, mismatched, used = [], [], [], set()
    for key, var, transform in targets:
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        value = sd[key] if transform is None else transform(sd[key])
        if tuple(value.shape) != tuple(var.shape):
            mismatched.append(f"{key}: checkpoint {sd[key].shape}, model {tuple(var.shape)}")
            continue
        assign.append((var, value))
    ignored = {k for k in sd if k.startswith(_VIT_IGNORED)}
    if not any(layer.name == "head" for layer in model.layers):
        ignored |= {"head.weight", "head.bias"}
    _raise_if_bad(where, "vit", model, missing, sorted(set(sd) - used - ignored), mismatched)
    for var, value in assign:
        var.assign(value.astype(var.dtype))
    return model


def _vit_targets(layer, module):
    import keras

    if isinstance(layer, keras.layers.LayerNormalization):
        return [(f"{module}.weight", layer.gamma, None), (f"{module}.bias", layer.beta, None)]
    return [(f"{module}.weight", layer.kernel, lambda a: a.T), (f"{module}.bias", layer.bias, None)]


def vit_imagenet(model):
    """Download DeiT-S (timm's ``deit_small_patch16_224.fb_in1k``, ImageNet-1k supervised, the
    "ImageNet" ViT-S) and load it into ``model`` (ViT-S/16 configuration, any input size)."""
    import keras

    from .models.vit import SMALL, TransformerBlock

    blocks = [l for l in model.layers if isinstance(l, TransformerBlock)]
    pe = model.get_layer("patch_embed")
    config = {"width": pe.width, "depth": len(blocks), "num_heads": blocks[0].num_heads,
              "mlp_ratio": blocks[0].mlp_ratio, "patch_size": pe.patch_size}
    if config != SMALL:
        raise ValueError(f"{model.name}: weights='imagenet' needs the ViT-S/16 configuration "
                         f"{SMALL}, got {config}; use weights=None for a reduced network")
    try:
        path = keras.utils.get_file(fname="deit_small_patch16_224.fb_in1k.safetensors",
                                    origin=VIT_URL, cache_subdir="cxr_keras")
    except Exception as e:  # get_file raises a bare Exception on network errors
        raise DataError(f"{model.name}: cannot download the ImageNet weights from {VIT_URL} ({e}). "
                        "Download that file by hand and pass weights='FILE.safetensors'") from e
    return vit_from_state_dict(read_state_dict(path), model, source=path)


FROM_STATE_DICT = {"res2net50": res2net50_from_state_dict, "resnet50": resnet50_from_state_dict,
                   "resnet18": resnet18_from_state_dict, "resnet34": resnet34_from_state_dict,
                   "vit_small": vit_from_state_dict}


def convert_checkpoint(arch, checkpoint, out, include_top=False) -> Path:
    """Convert a PyTorch ``checkpoint`` of ``arch`` (a key of :data:`FROM_STATE_DICT`) to a Keras
    ``.weights.h5`` file ``out`` (atomic); with ``include_top`` the classifier is kept and its
    class count taken from ``fc.weight``. Returns ``out``."""
    from . import models

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
    with atomic_path(out, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return out


def convert_res2net50(checkpoint, out, include_top=False) -> Path:
    """Convert an official / timm Res2Net-50 26w x 4s checkpoint to a Keras ``.weights.h5``."""
    return convert_checkpoint("res2net50", checkpoint, out, include_top)
