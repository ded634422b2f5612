"""PyTorch checkpoint files as NumPy state dicts, for the converters that sit beside each model
(``cxr_keras.models.res2net``, ``.resnet``, ``.vit``).

:func:`read_state_dict` reads ``.safetensors`` (NumPy only), ``.npz`` and, when PyTorch is
installed, ``.pth``/``.pt``/``.bin``; :func:`write_safetensors` writes one; :func:`assign` loads
``(key, variable, transform)`` targets into a model and names every missing key, unexpected key
and shape mismatch in one error.
"""

from __future__ import annotations

import json
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
CHECKPOINT_SUFFIXES = (".safetensors", ".npz") + TORCH_SUFFIXES


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


def raise_if_bad(where, arch, model, missing, unexpected, mismatched):
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



def assign(state_dict, targets, model, arch, source=None, ignored=()):
    """Load ``targets`` (``[(key, variable, transform or None)]``) from ``state_dict`` into
    ``model`` (in place): every key of ``state_dict`` must be used or ``ignored``, every target
    found with the variable's shape (after ``transform``), else one DataError names them all.
    Returns ``model``."""
    where = f"{source}: " if source is not None else ""
    values, missing, mismatched, used = [], [], [], set()
    for key, var, transform in targets:
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        raw = np.asarray(state_dict[key])
        value = raw if transform is None or raw.ndim != len(var.shape) else transform(raw)
        if tuple(value.shape) != tuple(var.shape):
            mismatched.append(f"{key}: checkpoint {tuple(raw.shape)}, model expects "
                              f"{_torch_layout(var.shape, transform)}")
            continue
        values.append((var, value))
    unexpected = sorted(set(state_dict) - used - set(ignored))
    raise_if_bad(where, arch, model, missing, unexpected, mismatched)
    for var, value in values:
        var.assign(value.astype(var.dtype))
    return model


def _torch_layout(shape, transform):
    """A Keras variable's shape in PyTorch's layout (for messages)."""
    shape = tuple(shape)
    if transform is None or len(shape) not in (2, 4):
        return shape
    return shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
