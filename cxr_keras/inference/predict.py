"""Predict a folder of radiographs with a ``.keras`` model or an exported SavedModel.

``predict_folder(model_path, images_dir, out_csv)`` reads every PNG / JPEG / DICOM under
``images_dir`` (recursively, sorted by relative path), preprocesses each one as the training
pipeline does for evaluation, and writes (atomically) a CSV with a ``path`` column (relative to
``images_dir``, ``/``-separated) and one sigmoid probability column per label.

Preprocessing, in order (the package's convention, :mod:`cxr_keras.data.cache` then
:mod:`cxr_keras.data.pipeline` with ``training=False``):

1. :func:`~cxr_keras.data.images.read_image` -> grey ``uint8``;
2. resize with OpenCV bicubic (``INTER_CUBIC``) on ``uint8``: when the model's metadata names a
   cache size and a centre crop (``export.json`` ``preprocessing``, or the run folder's
   ``config.json`` for ``RUN/checkpoints/*.keras``; fzlpr: 256 then 224), the image is resized
   to the cache size (scaled by input/crop if ``size`` differs) and centre cropped, exactly as in
   evaluation; otherwise it is resized straight to the model's input size;
3. grey -> as many channels as the model takes (3: the grey value repeated);
4. normalisation (:func:`cxr_keras.data.pipeline.normalize`, ImageNet mean/std by default).

Label names come from, in order: the ``labels`` argument, ``export.json`` of a SavedModel,
``labels.json`` beside the model (a list, or ``{"labels": [...]}``), the run folder of
``RUN/checkpoints/*.keras`` (``predictions/test.npz`` / ``metrics.json``), else ``class_0``...
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
from scipy import special

from ..data.images import DICOM_SUFFIXES, read_image
from ..io import DataError, atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


def list_images(images_dir) -> list[Path]:
    """Every PNG/JPEG/DICOM file under ``images_dir`` (recursive), sorted by relative path."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    files = [p for p in images_dir.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    files.sort(key=lambda p: p.relative_to(images_dir).as_posix())
    if not files:
        raise DataError(f"no PNG, JPEG or DICOM image under {images_dir}")
    return files


class SavedModelPredictor:
    """A SavedModel's ``serve`` endpoint behind ``predict_on_batch`` (what TTAPredictor calls)."""

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        self.path = Path(path)
        try:
            self._loaded = tf.saved_model.load(str(self.path))
        except Exception as e:
            raise DataError(f"cannot load SavedModel {self.path}: {e}") from e
        if hasattr(self._loaded, "serve"):
            self._fn = self._loaded.serve
            spec = self._fn.input_signature[0] if self._fn.input_signature else None
            self._dict_out = False
        else:
            sig = self._loaded.signatures.get("serving_default")
            if sig is None:
                raise DataError(f"SavedModel {self.path} has neither a 'serve' endpoint nor a "
                                "'serving_default' signature")
            self._fn = sig
            specs = list(sig.structured_input_signature[1].values())
            spec = specs[0] if len(specs) == 1 else None
            self._dict_out = True
        self.input_shape = (None if spec is None
                            else [None if d is None else int(d) for d in spec.shape])

    def predict_on_batch(self, x):
        tf = self._tf
        if self._dict_out:
            (name, spec), = self._fn.structured_input_signature[1].items()
            out = self._fn(**{name: tf.convert_to_tensor(x, tf.float32)})
            if len(out) != 1:
                raise DataError(f"SavedModel {self.path} has {len(out)} outputs; expected one")
            out = next(iter(out.values()))
        else:
            out = self._fn(tf.convert_to_tensor(x, tf.float32))
        return np.asarray(out)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def load_predictor(model_path):
    """``(model, metadata)`` for a ``.keras`` file or a SavedModel folder.

    ``model`` has ``predict_on_batch``; ``metadata`` holds what is known of ``input_shape``,
    ``labels``, ``normalization`` and ``preprocessing``.
    """
    from ..export import EXPORT_JSON, load_keras_model, output_activation, run_labels, run_preprocessing

    model_path = Path(model_path)
    meta = {"input_shape": None, "labels": None, "normalization": "imagenet",
            "preprocessing": None, "activation": "sigmoid"}
    if model_path.is_dir():
        if not (model_path / "saved_model.pb").exists():
            raise DataError(f"{model_path} is a folder but not a SavedModel (no saved_model.pb)")
        model = SavedModelPredictor(model_path)
        meta["input_shape"] = model.input_shape
        if (model_path / EXPORT_JSON).exists():
            exp = _read_json(model_path / EXPORT_JSON)
            for key in ("labels", "normalization", "preprocessing"):
                if exp.get(key) is not None:
                    meta[key] = exp[key]
            if exp.get("outputs") == "probabilities":
                meta["activation"] = None
            if exp.get("input_shape"):
                meta["input_shape"] = exp["input_shape"]
    elif model_path.suffix == ".keras":
        model = load_keras_model(model_path)
        meta["input_shape"] = [None if d is None else int(d) for d in model.inputs[0].shape]
        if output_activation(model):
            meta["activation"] = None
        run_dir = model_path.parent.parent if model_path.parent.name == "checkpoints" else None
        if run_dir is not None and (run_dir / "config.json").exists():
            config = _read_json(run_dir / "config.json")
            meta["preprocessing"] = run_preprocessing(config)
            meta["normalization"] = config.get("normalization", "imagenet")
            meta["labels"] = run_labels(run_dir)
    elif not model_path.exists():
        raise DataError(f"model not found: {model_path}")
    else:
        raise DataError(f"{model_path}: expected a .keras file or a SavedModel folder")
    side = model_path if model_path.is_dir() else model_path.parent
    if (side / "labels.json").exists():
        found = _read_json(side / "labels.json")
        found = found.get("labels") if isinstance(found, dict) else found
        if meta["labels"] is None or model_path.is_file():
            meta["labels"] = found
    return model, meta


def _target_hw(input_shape, size, model_path):
    shape = list(input_shape) if input_shape else [None, None, None, 3]
    if len(shape) != 4:
        raise DataError(f"{model_path}: expected an image model with (N, H, W, C) input, "
                        f"got {shape}")
    h, w, c = shape[1], shape[2], shape[3] or 3
    if size is not None:
        size = int(size)
        if (h is not None and h != size) or (w is not None and w != size):
            raise DataError(f"--size {size} does not fit the model {model_path}, whose input is "
                            f"{h}x{w}")
        h = w = size
    if h is None or w is None:
        raise DataError(f"the model {model_path} takes any input size; pass size=")
    return int(h), int(w), int(c)


def preprocess(img: np.ndarray, hw, channels: int = 3, preprocessing=None,
               normalization: str = "imagenet") -> np.ndarray:
    """One grey ``uint8`` image -> float32 (H, W, channels) model input (see module docstring)."""
    from ..data.pipeline import normalize

    h, w = hw
    pre = preprocessing or {}
    resize_to, crop = pre.get("resize_to"), pre.get("center_crop")
    if resize_to and crop:
        # The cache size scaled to this input: 256 / 224 times the input side.
        rh, rw = int(round(h * resize_to / crop)), int(round(w * resize_to / crop))
        img = _resize(img, rh, rw, pre.get("resize", "squash"))
        oy, ox = (rh - h) // 2, (rw - w) // 2
        img = img[oy:oy + h, ox:ox + w]
    else:
        img = _resize(img, h, w, pre.get("resize", "squash"))
    x = img.astype(np.float32)[..., None]
    if channels != 1:
        x = np.repeat(x, channels, axis=-1)
    return np.asarray(normalize(x, normalization), np.float32)


def _resize(img, h, w, mode="squash"):
    if img.shape == (h, w):
        return img
    if mode == "pad" and img.shape[0] != img.shape[1]:  # letterbox, as the cache's resize="pad"
        s = min(h / img.shape[0], w / img.shape[1])
        nh, nw = max(1, int(round(img.shape[0] * s))), max(1, int(round(img.shape[1] * s)))
        out = np.zeros((h, w), np.uint8)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh),
                                                       interpolation=cv2.INTER_CUBIC)
        return out
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


def _batches(files, batch_size, hw, channels, preprocessing, normalization):
    for start in range(0, len(files), batch_size):
        xs = []
        for path in files[start:start + batch_size]:
            img = read_image(path)  # DataError naming the file
            if img.size == 0:
                raise DataError(f"empty image: {path}")
            xs.append(preprocess(img, hw, channels, preprocessing, normalization))
        yield np.stack(xs)


def predict_folder(model_path, images_dir, out_csv, tta: bool = False, batch_size: int = 16,
                   size=None, labels=None, zoom: float = 0.1) -> Path:
    """Write the probabilities of every image under ``images_dir`` to ``out_csv`` (sigmoid of
    the logits, or the model's own softmax / sigmoid output).

    ``tta=True`` averages the probabilities over the test-time views of
    :class:`~cxr_keras.inference.tta.TTAPredictor` (original, hflip, zoom in/out by ``zoom``).
    ``size`` overrides the input side of a model that accepts any size. Returns ``out_csv``.
    """
    from .tta import TTAPredictor

    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    files = list_images(images_dir)
    model, meta = load_predictor(model_path)
    h, w, c = _target_hw(meta["input_shape"], size, model_path)
    batches = _batches(files, int(batch_size), (h, w), c, meta["preprocessing"],
                       meta["normalization"])
    activate = special.expit if meta["activation"] == "sigmoid" else (lambda v: v)
    if tta:
        probs = TTAPredictor(model, zoom=zoom, activation=meta["activation"]).predict(batches)
    else:
        probs = np.concatenate([activate(np.asarray(model.predict_on_batch(x), np.float64))
                                for x in batches])
    probs = np.asarray(probs, np.float64).reshape(len(files), -1)
    names = labels if labels is not None else meta["labels"]
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
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", *names])
            for path, row in zip(files, probs):
                writer.writerow([path.relative_to(root).as_posix(),
                                 *(f"{p:.9g}" for p in row)])
    return out_csv
