"""Export a trained model as a TensorFlow SavedModel (TF-specific module).

``export_run(RUN_DIR)`` loads ``RUN_DIR/checkpoints/best.keras`` (``safe_mode=True``: no Lambda
layers or other arbitrary code), exports it with Keras 3's ``model.export(format="tf_saved_model")``
to ``RUN_DIR/export/savedmodel`` and checks on random inputs that the SavedModel's serving function
gives the Keras model's outputs (max abs difference <= 1e-5, else :class:`ExportMismatch`).

The export folder holds, beside the SavedModel, ``export.json``::

    {"format": "tf_saved_model", "endpoint": "serve", "input_name": "image",
     "input_shape": [null, 224, 224, 3], "input_size": [224, 224], "output_names": ["output_0"],
     "num_outputs": 14, "outputs": "logits", "labels": [...] or null, "normalization": "imagenet",
     "preprocessing": {"resize_to": 256, "center_crop": 224, "interpolation": "bicubic",
                       "resize": "squash"} or null,
     "max_abs_diff": 0.0, "check_inputs_shape": [4, 224, 224, 3], ...}

``preprocessing`` is the evaluation convention of the run when its ``config.json`` names a cache
size and a crop (fzlpr: images resized to 256x256 bicubic, centre crop 224); ``predict_folder``
follows it. Nothing is ever half written: the export is built in a temporary sibling folder and
renamed into place only after the check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .integrity import verify
from .io import DataError, write_json

EXPORT_JSON = "export.json"
DEFAULT_ATOL = 1e-5


class ExportMismatch(RuntimeError):
    """The reloaded SavedModel's outputs differ from the Keras model's."""


def _model_input_shape(model):
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else model.input_shape
    return [None if d is None else int(d) for d in shape]


def export_savedmodel(model, out_dir, check_inputs=None, *, labels=None, normalization="imagenet",
                      preprocessing=None, atol=DEFAULT_ATOL, extra=None) -> Path:
    """Export ``model`` as a SavedModel at ``out_dir`` (replaced if present); returns ``out_dir``.

    The SavedModel is written to a temporary sibling folder, reloaded and checked there, then
    renamed to ``out_dir``. If ``check_inputs`` (an (N, H, W, C) array) is given, the reloaded
    SavedModel's ``serve`` output must equal ``model.predict`` within ``atol`` (max abs
    difference), else :class:`ExportMismatch` is raised and nothing is left behind. The difference
    and the model's metadata go to ``out_dir/export.json`` (see the module docstring).
    """
    import keras
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(tmp))
        sig = loaded.signatures["serving_default"]
        input_names = sorted(sig.structured_input_signature[1].keys())
        output_names = sorted(sig.structured_outputs.keys())
        out_specs = list(sig.structured_outputs.values())
        input_shape = _model_input_shape(model)
        num_outputs = int(out_specs[0].shape[-1]) if len(out_specs) == 1 else None
        meta = {
            "format": "tf_saved_model",
            "endpoint": "serve",
            "model_name": model.name,
            "input_name": input_names[0] if len(input_names) == 1 else input_names,
            "input_shape": input_shape,
            "input_size": input_shape[1:3] if len(input_shape) == 4 else None,
            "input_dtype": "float32",
            "output_names": output_names,
            "num_outputs": num_outputs,
            "outputs": "probabilities" if output_activation(model) else "logits",
            # what turns the outputs into probabilities (None: the model applies it already)
            "activation": None if output_activation(model) else "sigmoid",
            "output_activation": output_activation(model),
            "labels": None,
            "normalization": normalization,
            "preprocessing": preprocessing,
            "max_abs_diff": None,
            "atol": float(atol),
            "check_inputs_shape": None,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }
        if labels is not None:
            labels = [str(v) for v in labels]
            if num_outputs is not None and len(labels) != num_outputs:
                raise DataError(f"{len(labels)} label names for a model with {num_outputs} "
                                "outputs")
            meta["labels"] = labels
        if check_inputs is not None:
            x = np.asarray(check_inputs, np.float32)
            expected = np.asarray(model.predict(x, verbose=0), np.float64)
            got = np.asarray(loaded.serve(tf.constant(x)), np.float64)
            if got.shape != expected.shape:
                raise ExportMismatch(f"SavedModel output shape {got.shape} != Keras model output "
                                     f"shape {expected.shape}")
            diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
            if not np.isfinite(diff) or diff > atol:
                raise ExportMismatch(f"SavedModel outputs differ from the Keras model's by "
                                     f"{diff:.3g} (> {atol:g}); export not written")
            meta["max_abs_diff"] = diff
            meta["check_inputs_shape"] = list(x.shape)
        if extra:
            meta.update(extra)
        del loaded
        write_json(tmp / EXPORT_JSON, meta)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(src: Path, dest: Path):
    """Rename folder ``src`` to ``dest``; an existing ``dest`` is moved aside, then deleted."""
    old = None
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise DataError(f"export destination {dest} exists and is not a folder")
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_labels(run_dir):
    """Label names of a run folder: ``predictions/test.npz`` (or val.npz) "labels", else the keys
    of ``metrics.json``'s per-label AUC dictionaries; None if none is found."""
    run_dir = Path(run_dir)
    for name in ("test", "val"):
        path = run_dir / "predictions" / f"{name}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "labels" in z.files:
                        return [str(v) for v in np.asarray(z["labels"]).ravel()]
            except (OSError, ValueError):
                pass
    path = run_dir / "metrics.json"
    if path.exists():
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(metrics.get("labels"), list):
            return [str(v) for v in metrics["labels"]]
        for key in ("test_auc", "val_auc"):
            per_class = metrics.get(key)
            if isinstance(per_class, dict) and per_class:
                return [str(k) for k in per_class]
    return None


def output_activation(model):
    """``"softmax"`` or ``"sigmoid"`` when the model's last layer applies it (multiloss
    classifiers, U-Nets), None when the model outputs logits (fzlpr)."""
    act = getattr(model.layers[-1], "activation", None) if getattr(model, "layers", None) else None
    name = getattr(act, "__name__", None)
    return name if name in ("softmax", "sigmoid") else None


def run_preprocessing(config: dict):
    """The evaluation preprocessing of a run's ``config.json`` (None when it does not say)."""
    crop, cache_size = config.get("crop"), config.get("cache_size")
    if isinstance(crop, int) and isinstance(cache_size, int) and 0 < crop <= cache_size:
        return {"resize_to": cache_size, "center_crop": crop, "interpolation": "bicubic",
                "resize": config.get("resize", "squash")}
    return None


def load_keras_model(path):
    """``keras.saving.load_model(path, safe_mode=True, compile=False)``; DataError naming ``path``
    on failure (a Lambda layer, a file that is not a Keras archive, an unknown layer)."""
    import keras

    from . import (
        losses,  # noqa: F401  (registers the package's serialisable objects)
        models,  # noqa: F401
    )

    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing Keras model file: {path}")
    verify(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # keras raises ValueError, TypeError, zipfile errors...
        raise DataError(f"cannot load Keras model {path} (safe_mode=True): {e}") from e


def export_run(run_dir, out=None, *, n_check: int = 4, seed: int = 0,
               atol: float = DEFAULT_ATOL) -> Path:
    """Export ``run_dir/checkpoints/best.keras`` to ``out`` (default ``run_dir/export/savedmodel``).

    Checks the SavedModel against the Keras model on ``n_check`` random inputs and records the
    run's label names (``predictions/test.npz`` or ``metrics.json``), normalisation and evaluation
    preprocessing (``config.json``) in ``export.json``. Returns the export folder.
    """
    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / "best.keras"
    if not best.is_file():
        raise DataError(f"no trained model to export: {best} does not exist"
                        + ("" if run_dir.is_dir() else f" ({run_dir} is not a folder)"))
    model = load_keras_model(best)
    config = {}
    if (run_dir / "config.json").exists():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except ValueError as e:
            raise DataError(f"cannot parse {run_dir / 'config.json'}: {e}") from e
    shape = _model_input_shape(model)
    if len(shape) != 4:
        raise DataError(f"{best}: expected an image model with (N, H, W, C) input, got {shape}")
    side = config.get("crop") if isinstance(config.get("crop"), int) else 224
    h, w, c = (d if d is not None else side for d in shape[1:])
    x = np.random.default_rng(seed).normal(size=(n_check, h, w, c)).astype(np.float32)
    labels = run_labels(run_dir)
    n_out = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    if labels is not None and n_out is not None and len(labels) != n_out:
        labels = None  # names of another model; better none than wrong ones
    out = Path(out) if out is not None else run_dir / "export" / "savedmodel"
    return export_savedmodel(
        model, out, check_inputs=x, labels=labels,
        normalization=config.get("normalization", "imagenet"),
        preprocessing=run_preprocessing(config), atol=atol,
        extra={"source": str(best.resolve())})
