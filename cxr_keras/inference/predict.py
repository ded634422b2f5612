"""Predict a folder of radiographs with a ``.keras`` model or an exported model of any format.

``predict_folder(model, images_dir, out_csv)`` reads every PNG / JPEG / DICOM under ``images_dir``
(recursively, sorted by relative path; DICOM by its ``.dcm`` / ``.dicom`` suffix or, without a
suffix, by its ``DICM`` magic) and writes (atomically) a CSV with a ``path`` column (relative to
``images_dir``, ``/``-separated) and one probability column per label.

``model`` is a ``.keras`` file (a run's ``checkpoints/best.keras``: the run's preprocessing and
labels are read from its folder) or what ``cxr-keras export`` wrote: the export folder, its
``savedmodel/`` folder, ``model.onnx`` or ``model.tflite``. An exported model takes the decoded
``uint8`` pixels as they are and preprocesses them in its graph; a ``.keras`` model gets the same
preprocessing here in Python (:func:`preprocess`, the package's evaluation convention):

1. :func:`~cxr_keras.data.images.read_image` -> grey ``uint8`` (DICOM through pydicom's display
   pipeline);
2. resize to the run's cache size with OpenCV bicubic (``INTER_CUBIC``) on ``uint8``, as the cache;
3. the evaluation centre crop, or mtpret's last bilinear resize (``tf.image.resize``);
4. grey -> as many channels as the model takes; 5. the run's normalisation.

Label names come from, in order: the ``labels`` argument, the export's ``export.json``,
``labels.json`` beside the model (a list, or ``{"labels": [...]}``), the run folder of
``RUN/checkpoints/*.keras`` (``predictions/test.npz`` / ``metrics.json``), else ``class_0``...
A file that cannot be read stops the run with an error naming it (``on_error="stop"``), or is
reported by name on stderr and in ``OUT.errors.csv`` and left out (``on_error="skip"``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy import special

from ..data.images import DICOM_SUFFIXES, read_dicom, read_image
from ..io import DataError, atomic_path
from ..progress import Progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


def _is_dicom_without_suffix(path: Path) -> bool:
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def list_images(images_dir) -> list[Path]:
    """Every PNG/JPEG/DICOM file under ``images_dir`` (recursive), sorted by relative path."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    files = [p for p in images_dir.rglob("*") if p.is_file() and (
        p.suffix.lower() in IMAGE_SUFFIXES or _is_dicom_without_suffix(p))]
    files.sort(key=lambda p: p.relative_to(images_dir).as_posix())
    if not files:
        raise DataError(f"no PNG, JPEG or DICOM image under {images_dir}")
    return files


def _read(path: Path) -> np.ndarray:
    img = read_dicom(path) if not path.suffix else read_image(path)  # list_images: DICM only
    if img.size == 0:
        raise DataError(f"empty image: {path}")
    return img


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


class KerasPredictor:
    """A ``.keras`` model with the Python preprocessing of its run."""

    def __init__(self, path, size=None):
        from ..export import load_keras_model, output_activation, read_run_config, run_labels, run_preprocessing

        self.path = Path(path)
        self.model = load_keras_model(self.path)
        shape = [None if d is None else int(d) for d in self.model.inputs[0].shape]
        if len(shape) != 4:
            raise DataError(f"{self.path}: expected an image model with (N, H, W, C) input, got {shape}")
        run_dir = self.path.parent.parent if self.path.parent.name == "checkpoints" else None
        config = read_run_config(run_dir) if run_dir is not None else {}
        self.preprocessing = run_preprocessing(config, shape) if size is None else None
        if self.preprocessing is None:
            h, w = shape[1:3]
            if size is not None:
                if (h is not None and h != size) or (w is not None and w != size):
                    raise DataError(f"--size {size} does not fit the model {self.path}, whose "
                                    f"input is {h}x{w}")
                h = w = int(size)
            if h is None or w is None:
                raise DataError(f"the model {self.path} takes any input size; pass size=")
            self.preprocessing = dict(resize_to=[h, w], center_crop=None, output_size=None,
                                      channels=shape[3] or 3,
                                      normalization=config.get("normalization", "imagenet"))
        self.activation = None if output_activation(self.model) else "sigmoid"
        self.labels = run_labels(run_dir) if run_dir is not None else None
        self.raw = False

    def predict_on_batch(self, x):
        return np.asarray(self.model.predict_on_batch(x))


class ExportedPredictor:
    """What ``cxr-keras export`` wrote: raw ``uint8`` images in, probabilities out."""

    def __init__(self, path):
        from ..export import EXPORT_JSON, load_exported

        path = Path(path)
        if path.is_dir() and not (path / "saved_model.pb").exists():  # the export folder
            meta = _read_json(path / EXPORT_JSON)
            if not meta.get("formats"):
                raise DataError(f"{path / EXPORT_JSON} lists no exported format")
            fmt, name = next(iter(meta["formats"].items()))
            path = path / name
        else:
            fmt = "savedmodel" if path.is_dir() else {".onnx": "onnx", ".tflite": "litert"}[path.suffix]
            found = [p for p in (path / "assets.extra" / EXPORT_JSON, path.parent / EXPORT_JSON)
                     if p.is_file()]
            meta = _read_json(found[0]) if found else {}
        if meta and "formats" not in meta:
            raise DataError(f"{path} was exported by an older cxr-keras (float input): export the "
                            "run again with cxr-keras export")
        self.path, self.format, self.meta = path, fmt, meta
        self.run = load_exported(path, fmt)
        self.labels = meta.get("labels")
        self.preprocessing = meta.get("preprocessing")
        self.activation = None  # probabilities already
        self.raw = True

    def predict_raw(self, images):
        return np.asarray(self.run(np.stack(images)))

    def predict_on_batch(self, x):  # the preprocessed model input (test-time augmentation)
        loaded = getattr(self.run, "loaded", None)
        if loaded is None or not hasattr(loaded, "serve_model_input") or not self.preprocessing:
            raise DataError(f"test-time augmentation needs the .keras model or an exported "
                            f"SavedModel, not {self.path}")
        import tensorflow as tf

        return np.asarray(loaded.serve_model_input(tf.constant(x, tf.float32)))


def load_predictor(model_path, size=None):
    """A :class:`KerasPredictor` for a ``.keras`` file, an :class:`ExportedPredictor` for an
    export folder, a SavedModel folder, ``.onnx`` or ``.tflite``; DataError naming anything else."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise DataError(f"model not found: {model_path}")
    if model_path.suffix == ".keras" and model_path.is_file():
        predictor = KerasPredictor(model_path, size)
    elif model_path.is_dir() and not ((model_path / "saved_model.pb").exists()
                                      or (model_path / "export.json").exists()):
        raise DataError(f"{model_path} is a folder but neither an export nor a SavedModel "
                        "(no export.json, no saved_model.pb)")
    elif model_path.is_dir() or model_path.suffix in (".onnx", ".tflite"):
        predictor = ExportedPredictor(model_path)
    else:
        raise DataError(f"{model_path}: expected a .keras file, an export folder, a SavedModel "
                        "folder, a .onnx or a .tflite file")
    side = model_path if model_path.is_dir() else model_path.parent
    if (side / "labels.json").exists():
        found = _read_json(side / "labels.json")
        found = found.get("labels") if isinstance(found, dict) else found
        if predictor.labels is None or model_path.is_file():
            predictor.labels = found
    return predictor


def preprocess(img: np.ndarray, preprocessing: dict) -> np.ndarray:
    """One grey ``uint8`` image -> the float32 (h, w, channels) model input; ``preprocessing``:
    :class:`~cxr_keras.layers.raw_image.RawImagePreprocessing`'s arguments (module docstring)."""
    from ..data.pipeline import normalize

    def pair(v):
        return None if v is None else (int(v), int(v)) if isinstance(v, int) else tuple(map(int, v))

    rh, rw = pair(preprocessing["resize_to"])
    crop, size = pair(preprocessing.get("center_crop")), pair(preprocessing.get("output_size"))
    if img.shape != (rh, rw):
        img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_CUBIC)
    if crop:
        oy, ox = (rh - crop[0]) // 2, (rw - crop[1]) // 2
        img = img[oy:oy + crop[0], ox:ox + crop[1]]
    x = img.astype(np.float32)[..., None]
    if size:
        import tensorflow as tf

        x = tf.image.resize(x, size, method="bilinear").numpy()
    channels = int(preprocessing.get("channels", 3))
    if channels != 1:
        x = np.repeat(x, channels, axis=-1)
    return np.asarray(normalize(x, preprocessing.get("normalization", "imagenet")), np.float32)


def _chunks(files, size: int, on_error: str, errors: list):
    """``(paths, images)`` of up to ``size`` readable files at a time (a folder larger than memory
    streams through); an unreadable file raises (``"stop"``) or is named on stderr and appended
    to ``errors`` (``"skip"``)."""
    for start in range(0, len(files), size):
        paths, images = [], []
        for path in files[start:start + size]:
            try:
                images.append(_read(path))
                paths.append(path)
            except DataError as e:
                if on_error == "stop":
                    raise
                print(f"\nskipped {path}: {e}", file=sys.stderr, flush=True)
                errors.append((path, str(e)))
        if images:
            yield paths, images


def _predict_raw(predictor, images, batch_size):
    """Probabilities of raw images: consecutive images of one size go in one batch."""
    out, start = [], 0
    while start < len(images):
        stop = start + 1
        while (stop < len(images) and stop - start < batch_size
               and images[stop].shape == images[start].shape):
            stop += 1
        out.append(predictor.predict_raw(images[start:stop]))
        start = stop
    return np.concatenate(out)


def predict_folder(model_path, images_dir, out_csv, tta: bool = False, batch_size: int = 16,
                   size=None, labels=None, zoom: float = 0.1, on_error: str = "stop",
                   progress: bool = False) -> Path:
    """Write the probabilities of every image under ``images_dir`` to ``out_csv`` (module
    docstring); returns ``out_csv``.

    Images are read ``batch_size`` at a time (``progress=True`` shows a bar on stderr).
    ``tta=True`` averages the probabilities over the test-time views of
    :class:`~cxr_keras.inference.tta.TTAPredictor` (original, hflip, zoom in/out by ``zoom``;
    a ``.keras`` model or an exported SavedModel). ``size`` overrides the input side of a
    ``.keras`` model that accepts any size. ``on_error``: ``"stop"`` or ``"skip"``.
    """
    from .tta import TTAPredictor

    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if on_error not in ("stop", "skip"):
        raise DataError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    files = list_images(images_dir)
    predictor = load_predictor(model_path, size)
    batch_size, errors, kept, parts = int(batch_size), [], [], []
    tta_model = TTAPredictor(predictor, zoom=zoom, activation=predictor.activation) if tta else None
    bar = Progress(len(files), "predict", enabled=progress)
    for paths, images in _chunks(files, batch_size, on_error, errors):
        if predictor.raw and not tta:
            parts.append(_predict_raw(predictor, images, batch_size))
        else:
            x = np.stack([preprocess(img, predictor.preprocessing) for img in images])
            if tta:
                parts.append(tta_model.predict(x, batch_size=batch_size))
            else:
                out = np.asarray(predictor.predict_on_batch(x), np.float64)
                parts.append(special.expit(out) if predictor.activation == "sigmoid" else out)
        if np.ndim(parts[-1]) != 2:
            raise DataError(f"{model_path} outputs {np.shape(parts[-1])[1:]} per image (a map, "
                            "not one probability per label): predict writes per-image "
                            "probabilities")
        kept += paths
        bar.update(len(kept) + len(errors) - bar.done)  # files read or skipped so far
    if not kept:
        raise DataError(f"none of the {len(files)} images under {images_dir} could be read")
    files, probs = kept, np.concatenate([np.asarray(p, np.float64) for p in parts])
    names = labels if labels is not None else predictor.labels
    if names is None:
        names = [f"class_{i}" for i in range(probs.shape[1])]
    names = [str(n) for n in names]
    if len(names) != probs.shape[1]:
        raise DataError(f"{len(names)} label names ({names}) for a model with {probs.shape[1]} "
                        "outputs")
    if "path" in names:
        raise DataError("a label may not be called 'path' (the CSV's first column)")
    root = Path(images_dir)
    out_csv = Path(out_csv)
    if errors:
        with atomic_path(out_csv.with_name(out_csv.name + ".errors.csv")) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "error"])
                writer.writerows((p.relative_to(root).as_posix(), e) for p, e in errors)
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", *names])
            for path, row in zip(files, probs):
                writer.writerow([path.relative_to(root).as_posix(),
                                 *(f"{p:.9g}" for p in row)])
    return out_csv
