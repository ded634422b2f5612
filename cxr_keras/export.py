"""Export a run's model for serving: raw pixels in, probabilities out (TF-specific module).

``export_run(RUN_DIR, formats=("savedmodel", "onnx", "litert"))`` loads
``RUN_DIR/checkpoints/best.keras`` (``safe_mode=True``: no Lambda layers or other arbitrary code) and
wraps it into a *serving model* that needs nothing but pixels: its input is a batch of raw grey
images ``(N, H, W)`` of any size, ``uint8`` (or ``uint16`` for the SavedModel's ``serve_uint16``),
the run's own evaluation preprocessing runs in the graph
(:class:`~cxr_keras.layers.raw_image.RawImagePreprocessing`: the cache's OpenCV-cubic resize,
centre crop, last resize, channel tiling, normalisation) and probabilities come out (the sigmoid of
a multi-label model's logits; a softmax or sigmoid the model applies itself is kept). Formats:

- ``savedmodel`` -> ``OUT/savedmodel/`` (core dependencies): endpoints ``serve`` (also
  ``serving_default``, what TF Serving calls; ``uint8 (N, H, W)``), ``serve_uint16``,
  ``serve_bytes`` (``string (N,)``: encoded PNG or JPEG files, 8 or 16 bit, grey or colour, each of
  its own size) and ``serve_model_input`` (the Keras model's own float input, for test-time
  augmentation); ``export.json`` is also in its ``assets.extra/``;
- ``onnx`` -> ``OUT/model.onnx`` (``pip install "cxr-keras[onnx]"``: tf2onnx, onnx, onnxruntime),
  input ``uint8 (N, H, W)``; the labels, activation and preprocessing are in its metadata_props;
- ``litert`` -> ``OUT/model.tflite`` (TensorFlow's converter; checked with ``ai-edge-litert`` when
  installed, ``pip install "cxr-keras[litert]"``, else TensorFlow's own interpreter), input
  ``uint8 (N, H, W)`` (resize the input tensor to the image's size).

Every format is checked before anything is written: on raw images of two sizes (neither the cache
size nor square) its output must equal the Keras model applied to the Python preprocessing
(:func:`cxr_keras.inference.predict.preprocess`, the package's evaluation convention) within
``atol`` = 1e-4 (max abs difference of probabilities; the float32 resize agrees with OpenCV's on all
but about 1 pixel in 100,000, by one grey level), else :class:`ExportMismatch`. ``OUT/export.json``::

    {"formats": {"savedmodel": "savedmodel", "onnx": "model.onnx", "litert": "model.tflite"},
     "input": {"dtype": "uint8", "shape": [null, null, null], "layout": "grey (N, H, W), any size"},
     "outputs": "probabilities", "activation": "sigmoid" (applied in the graph) or
     "softmax"/"sigmoid" (the model's own), "labels": [...], "preprocessing": {"resize_to": [256, 256],
     "center_crop": [224, 224], "output_size": null, "channels": 3, "normalization": "imagenet"},
     "model_input_shape": [null, 224, 224, 3], "check": {"savedmodel": {"max_abs_diff": ...}, ...},
     "atol": 0.0001, "source": ".../best.keras", "keras_version": ..., "tensorflow_version": ...}

The whole export is built in a temporary sibling folder and renamed into place when every check
passed: nothing is ever half written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .integrity import verify
from .io import DataError, MissingExtra, require_extra, write_json

EXPORT_JSON = "export.json"
DEFAULT_ATOL = 1e-4
FORMATS = {"savedmodel": "savedmodel", "onnx": "model.onnx", "litert": "model.tflite"}
ONNX_MODULES = ("tf2onnx", "onnx", "onnxruntime")  # the `onnx` extra


class ExportMismatch(RuntimeError):
    """An exported model's outputs differ from the Keras model's."""


def output_activation(model):
    """``"softmax"`` or ``"sigmoid"`` when the model's last layer applies it (multiloss
    classifiers, U-Nets), None when the model outputs logits (fzlpr)."""
    act = getattr(model.layers[-1], "activation", None) if getattr(model, "layers", None) else None
    name = getattr(act, "__name__", None)
    return name if name in ("softmax", "sigmoid") else None


def _input_shape(model):
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else model.input_shape
    return [None if d is None else int(d) for d in shape]


def run_preprocessing(config: dict, input_shape=None):
    """The evaluation preprocessing of a run folder's ``config.json`` as
    :class:`~cxr_keras.layers.raw_image.RawImagePreprocessing` arguments, or None when the config
    does not say. The runs of this package's recipes: ``crop`` + ``cache_size`` (fzlpr, mlrfnet,
    multiloss' U-Nets and classifiers: a square cache, centre crop); an int ``image_size`` +
    ``cache_size`` (dual_mae: the centre crop of ``image_size``); a pair ``image_size`` +
    ``cache_size`` (mtpret: the square cache resized to ``image_size``, the paper's Z-score).
    ``input_shape`` (N, H, W, C) gives the channels (default 3)."""
    channels = int(input_shape[-1]) if input_shape and input_shape[-1] else 3
    crop, cache, size = config.get("crop"), config.get("cache_size"), config.get("image_size")
    if config.get("resize", "squash") != "squash" or not isinstance(cache, int) or cache <= 0:
        return None
    spec = dict(resize_to=[cache, cache], center_crop=None, output_size=None, channels=channels,
                normalization=config.get("normalization", "imagenet"))
    if isinstance(crop, int) and 0 < crop <= cache:
        spec["center_crop"] = [crop, crop]
    elif isinstance(size, int) and 0 < size <= cache:
        spec["center_crop"] = [size, size]
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        spec.update(output_size=[int(v) for v in size],
                    normalization=config.get("normalization", "mtpret"))
    else:
        return None
    if spec["center_crop"] == spec["resize_to"]:
        spec["center_crop"] = None
    return spec


def _policy_names(config):
    """Every dtype policy name in a serialised Keras object."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            yield config["config"]["name"]
        for value in config.values():
            yield from _policy_names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _policy_names(value)


def _to_float32(config):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config["config"]["name"].startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _to_float32(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_to_float32(v) for v in config]
    return config


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def serving_copy(model):
    """A copy of ``model`` to export: the same weights, in float32 (a model trained under mixed
    float16 / bfloat16 is served in float32: ONNX Runtime's and LiteRT's CPU kernels take neither
    half type, and the variables are float32 anyway), and the constants that Normalization layers
    derive from their weights held as variables (tf2onnx freezes variables; it would leave those
    constants as missing graph inputs). ``model`` itself is not changed."""
    import keras
    import tensorflow as tf

    copy = keras.saving.deserialize_keras_object(
        _to_float32(keras.saving.serialize_keras_object(model)), safe_mode=True)
    copy.set_weights(model.get_weights())
    for layer in _all_layers(copy):
        if hasattr(layer, "finalize_state"):  # e.g. Normalization: mean / variance from weights
            layer.finalize_state()
        if isinstance(layer, keras.layers.Normalization):
            for name in ("mean", "variance"):
                value = getattr(layer, name, None)
                if value is not None and not isinstance(value, tf.Variable):
                    object.__setattr__(layer, name, tf.Variable(value, trainable=False))
    return copy


def serving_model(model, preprocessing: dict, input_dtype: str = "uint8"):
    """``model`` behind :class:`RawImagePreprocessing` (``preprocessing``: its arguments) and the
    activation that turns its outputs into probabilities: a Keras model from raw grey images
    ``(N, H, W)`` of ``input_dtype`` and any size to probabilities."""
    import keras

    from .layers.raw_image import RawImagePreprocessing

    images = keras.Input((None, None), dtype=input_dtype, name="image")
    out = model(RawImagePreprocessing(**preprocessing, name="preprocessing")(images))
    if output_activation(model) is None:
        out = keras.layers.Activation("sigmoid", name="probabilities", dtype="float32")(out)
    return keras.Model(images, out, name=f"{model.name}_serving")


def check_images(preprocessing: dict, n: int = 2, seed: int = 0):
    """Raw ``uint8`` test images, ``n`` of each of two sizes around the cache size (one larger and
    taller, one smaller and wider: neither square nor the cache size), smooth like radiographs."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = preprocessing["resize_to"]
    batches = []
    for fh, fw in ((1.3, 1.1), (0.8, 0.9)):
        shape = (max(8, int(h * fh) + 1), max(8, int(w * fw)))
        batch = [cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 1.5)
                 for _ in range(n)]
        batches.append(np.stack(batch))
    return batches


def _reference(model, batch, preprocessing):
    """The Keras model on the Python preprocessing of ``batch``, as probabilities."""
    from scipy import special

    from .inference.predict import preprocess

    x = np.stack([preprocess(img, preprocessing) for img in batch])
    out = np.asarray(model.predict(x, verbose=0), np.float64)
    return out if output_activation(model) else special.expit(out)


def _compare(name, got, expected, atol):
    got = np.asarray(got, np.float64)
    if got.shape != expected.shape:
        raise ExportMismatch(f"{name}: output shape {got.shape} != the Keras model's {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise ExportMismatch(f"{name}: outputs differ from the Keras model's by {diff:.3g} "
                             f"(> {atol:g}); export not written")
    return diff


def _write_savedmodel(serving, model, path: Path, meta: dict):
    import keras
    import tensorflow as tf

    pre, head = serving.get_layer("preprocessing"), serving.layers[2:]

    # The model is traced once, here; every endpoint calls this function (one copy in the file)
    @tf.function(input_signature=[tf.TensorSpec(_input_shape(model), tf.float32)])
    def probabilities(x):
        for layer in head:
            x = layer(x)
        return x

    def one_image(data):
        # 16-bit decoding keeps 16-bit PNGs whole (8-bit files become multiples of 257); colour
        # -> grey with OpenCV's luma weights (alpha ignored), as read_image does
        # (JPEG: libjpeg's accurate integer IDCT, as OpenCV decodes it)
        img = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.cast(tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE"), tf.float32) * 257.0,
            lambda: tf.cast(tf.io.decode_png(data, dtype=tf.uint16), tf.float32))
        rgb = tf.cond(tf.shape(img)[-1] >= 3, lambda: img[..., :3],
                      lambda: tf.tile(img[..., :1], [1, 1, 3]))
        grey = tf.reduce_sum(rgb * tf.constant([0.299, 0.587, 0.114]), -1)
        return pre(tf.cast(tf.round(grey), tf.uint16)[None])[0]

    out_shape = pre.compute_output_shape((None, None, None))[1:]
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint("serve", lambda x: probabilities(pre(x)),
                         [tf.TensorSpec([None, None, None], tf.uint8)])
    archive.add_endpoint("serve_uint16", lambda x: probabilities(pre(x)),
                         [tf.TensorSpec([None, None, None], tf.uint16)])
    archive.add_endpoint(
        "serve_bytes",
        lambda b: probabilities(tf.map_fn(one_image, b, fn_output_signature=tf.TensorSpec(
            out_shape, tf.float32))),
        [tf.TensorSpec([None], tf.string)])
    archive.add_endpoint("serve_model_input", probabilities)
    archive.write_out(str(path), verbose=False)
    write_json(path / "assets.extra" / EXPORT_JSON, meta)


def _run_savedmodel(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def run(x):
        return np.asarray(loaded.serve(tf.constant(np.asarray(x, np.uint8))))
    run.loaded = loaded  # its other endpoints
    return run


def _raw_signature():
    """The exported input: raw grey uint8 images (N, H, W) of any size."""
    import tensorflow as tf

    return [tf.TensorSpec([None, None, None], tf.uint8, name="image")]


def _register_erfc_for_tf2onnx():
    """tf2onnx has no converter for TF's ``Erfc`` (the exact GELU of the ViTs: ``0.5 x
    erfc(-x / sqrt 2)``) and ONNX no such op: convert it as ``1 - Erf(x)`` (ONNX Erf, opset 9)."""
    import tf2onnx.onnx_opset  # noqa: F401  (registers tf2onnx's own converters first)
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in handlers for handlers in tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):
        return

    @tf_op("Erfc")
    class Erfc:  # noqa: F841  (registered by the decorator)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x, dtype = node.input[0], ctx.get_dtype(node.input[0])
            erf = ctx.make_node("Erf", [x], op_name_scope=node.name, shapes=[ctx.get_shape(x)],
                                dtypes=[dtype])
            one = ctx.make_const(utils.make_name(f"{node.name}_one"),
                                 np.array(1, dtype=utils.map_onnx_to_numpy_type(dtype)))
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _write_onnx(serving, model, path: Path, meta: dict):
    require_extra("ONNX export", "onnx", ONNX_MODULES)
    import onnx

    _register_erfc_for_tf2onnx()

    serving.export(str(path), format="onnx", verbose=False, input_signature=_raw_signature())
    proto = onnx.load(str(path))
    for key in ("labels", "activation", "preprocessing", "outputs"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(meta[key])
    onnx.save(proto, str(path))


def _run_onnx(path: Path):
    require_extra("Running an ONNX model", "onnx", ("onnxruntime",))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.asarray(x, np.uint8)})[0]


def _write_litert(serving, model, path: Path, meta: dict):
    import keras

    try:
        serving.export(str(path), format="litert", verbose=False,
                       input_signature=_raw_signature())
    except ValueError as e:
        if "format" in str(e) and not path.exists():  # a Keras without LiteRT export
            raise DataError(f"LiteRT export needs a Keras that has model.export(format='litert') "
                            f"(Keras {keras.__version__} says: {e})") from e
        raise


def _run_litert(path: Path):
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter
    else:  # TensorFlow's own (deprecated) interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path))

    def run(x):
        x = np.asarray(x, np.uint8)
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
    return run


WRITERS = {"savedmodel": _write_savedmodel, "onnx": _write_onnx, "litert": _write_litert}
RUNNERS = {"savedmodel": _run_savedmodel, "onnx": _run_onnx, "litert": _run_litert}


def load_exported(path, fmt: str | None = None):
    """A function ``uint8 (N, H, W) -> probabilities`` for an exported SavedModel folder,
    ``.onnx`` or ``.tflite`` file (``fmt`` by its name when None)."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "litert" if path.suffix == ".tflite"
                  else "savedmodel")
    try:
        return RUNNERS[fmt](path)
    except MissingExtra:
        raise
    except Exception as e:
        raise DataError(f"cannot load the exported {fmt} model {path}: {e}") from e


def parse_formats(formats) -> tuple:
    """``"savedmodel,onnx"`` or a sequence -> a tuple of known format names (DataError naming
    any unknown one); ``"all"`` -> every format."""
    if isinstance(formats, str):
        formats = tuple(FORMATS) if formats.strip() == "all" else formats.split(",")
    names = tuple(dict.fromkeys(str(f).strip().lower() for f in formats if str(f).strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise DataError(f"export formats: unknown {unknown or formats!r}; known: "
                        f"{', '.join(FORMATS)} or all")
    return names


def export_model(model, out, preprocessing: dict, *, labels=None, formats=("savedmodel",),
                 atol: float = DEFAULT_ATOL, extra=None) -> Path:
    """Export ``model`` with ``preprocessing`` (RawImagePreprocessing arguments) in ``formats``
    to the folder ``out`` (replaced if present), each checked (module docstring); returns ``out``."""
    import keras
    import tensorflow as tf

    formats = parse_formats(formats)
    if "onnx" in formats:
        require_extra("ONNX export", "onnx", ONNX_MODULES)
    trained_policy = sorted(set(_policy_names(keras.saving.serialize_keras_object(model))))
    model = serving_copy(model)
    serving = serving_model(model, preprocessing)
    n_out = int(serving.outputs[0].shape[-1])
    if labels is not None:
        labels = [str(v) for v in labels]
        if len(labels) != n_out and len(serving.outputs[0].shape) == 2:
            raise DataError(f"{len(labels)} label names for a model with {n_out} outputs")
    meta = {
        "formats": {f: FORMATS[f] for f in formats},
        "input": {"dtype": "uint8", "shape": [None, None, None],
                  "layout": "grey (N, H, W), any size; the SavedModel also takes uint16 "
                            "(serve_uint16) and encoded PNG / JPEG bytes (serve_bytes)"},
        "outputs": "probabilities",
        "activation": output_activation(model) or "sigmoid",
        "labels": labels,
        "preprocessing": preprocessing,
        "model_name": model.name,
        "model_input_shape": _input_shape(model),
        "output_shape": [None if d is None else int(d) for d in serving.outputs[0].shape],
        "atol": float(atol),
        "trained_dtype_policies": trained_policy,  # served in float32 (serving_copy)
        "check": {},
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        **(extra or {}),
    }
    batches = check_images(preprocessing)
    expected = [_reference(model, b, preprocessing) for b in batches]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for fmt in formats:
            path = tmp / FORMATS[fmt]
            WRITERS[fmt](serving, model, path, meta)
            run = load_exported(path, fmt)
            diffs = [_compare(f"{fmt} export", run(b), e, atol) for b, e in zip(batches, expected)]
            meta["check"][fmt] = {"max_abs_diff": max(diffs),
                                  "images": [list(b.shape) for b in batches]}
        write_json(tmp / EXPORT_JSON, meta)
        if "savedmodel" in formats:
            write_json(tmp / FORMATS["savedmodel"] / "assets.extra" / EXPORT_JSON, meta)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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


def read_run_config(run_dir) -> dict:
    """``RUN_DIR/config.json`` ({} when absent); DataError naming it when it does not parse."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot parse {path}: {e}") from e


def export_run(run_dir, out=None, *, formats=("savedmodel",), atol: float = DEFAULT_ATOL) -> Path:
    """Export ``run_dir/checkpoints/best.keras`` in ``formats`` to ``out`` (default
    ``run_dir/export``) with the run's evaluation preprocessing (``config.json``) and label names
    (``predictions/test.npz`` or ``metrics.json``); returns the export folder."""
    run_dir = Path(run_dir)
    formats = parse_formats(formats)
    best = run_dir / "checkpoints" / "best.keras"
    if not best.is_file():
        raise DataError(f"no trained model to export: {best} does not exist"
                        + ("" if run_dir.is_dir() else f" ({run_dir} is not a folder)"))
    model = load_keras_model(best)
    shape = _input_shape(model)
    if len(shape) != 4 or len(getattr(model, "inputs", [])) != 1 or len(model.outputs) != 1:
        raise DataError(f"{best}: export takes a model with one (N, H, W, C) image input and one "
                        f"output (a classifier or a segmenter), not {len(model.outputs)} outputs "
                        f"from input {shape}")
    preprocessing = run_preprocessing(read_run_config(run_dir), shape)
    if preprocessing is None:
        if None in shape[1:3]:
            raise DataError(f"{run_dir / 'config.json'} does not give the run's image size "
                            f"(cache_size and crop or image_size), and {best} takes any size")
        preprocessing = dict(resize_to=shape[1:3], center_crop=None, output_size=None,
                             channels=shape[3] or 3, normalization="imagenet")
    labels = run_labels(run_dir)
    n_out = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    if labels is not None and (len(model.outputs[0].shape) != 2 or len(labels) != n_out):
        labels = None  # names of another model; better none than wrong ones
    return export_model(model, Path(out) if out is not None else run_dir / "export",
                        preprocessing, labels=labels, formats=formats, atol=atol,
                        extra={"source": str(best.resolve())})
