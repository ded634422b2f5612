"""Export of a run (raw pixels in, probabilities out: SavedModel, ONNX, LiteRT), safe .keras
reloading, and folder prediction with a .keras or any exported format."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_keras.data.images import can_compress_dicom, write_dicom, write_image
from cxr_keras.export import ExportMismatch, export_model, export_run, load_exported
from cxr_keras.inference.predict import predict_folder
from cxr_keras.io import DataError, MissingExtra
from cxr_keras.models import densenet121_fzlpr
from cxr_keras.training import RunFolder

import _models  # noqa: E402  (tests/ is on sys.path under pytest)
from _cli import console_script

LABELS = ["Atelectasis", "Effusion", "Nodule"]
SIZE, CACHE = 28, 32
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def tiny_backbone(size=SIZE, channels=8):
    return _models.tiny_backbone(size, channels)


def tiny_model():
    """The paper's top (Conv, BN, Dropout, Dense, final BatchNormalization) on a tiny backbone."""
    keras.utils.set_random_seed(7)
    model = densenet121_fzlpr(num_classes=len(LABELS), base=tiny_backbone())
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BN statistics, without a slow fit
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = tiny_model()
    run = RunFolder(root / "run")
    run.write_json("config.json", {"crop": SIZE, "cache_size": CACHE, "loss": "fzlpr"})
    run.save_predictions("test", y_true=np.zeros((2, 3), np.float32),
                         prob_original=np.zeros((2, 3), np.float32), labels=np.array(LABELS))
    model.save(run.checkpoints / "best.keras")
    images = root / "images"
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(40, 36), (32, 32), (50, 45), (30, 41), (64, 64)]):
        write_image(images / f"img{i}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
    write_image(images / "sub" / "a.jpg", rng.integers(0, 256, (48, 40), dtype=np.uint8))
    write_dicom(images / "sub" / "b.dcm", rng.integers(0, 256, (36, 36), dtype=np.uint8))
    codec = "jpeg2000" if can_compress_dicom("jpeg2000") else "rle"  # a hospital's compressed file
    write_dicom(images / "sub" / "c.dcm", rng.integers(0, 256, (40, 33), dtype=np.uint8),
                monochrome1=True, voi="lut", compression=codec)
    (images / "notes.txt").write_text("not an image")
    export = export_run(run.path, formats="all")
    return dict(root=root, run=run, model=model, images=images, export=export)


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])



def manual_input(img, resize_to=CACHE, crop=SIZE):
    """The evaluation preprocessing written out: cv2 bicubic to the cache size, centre crop,
    grey x3, ImageNet mean / std."""
    import cv2

    img = cv2.resize(img, (resize_to, resize_to), interpolation=cv2.INTER_CUBIC)
    o = (resize_to - crop) // 2
    x = np.repeat(img[o:o + crop, o:o + crop, None].astype(np.float32), 3, axis=-1)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return (x / 255.0 - mean) / std


def keras_probabilities(model, images):
    from scipy.special import expit

    return expit(model.predict(np.stack([manual_input(i) for i in images]), verbose=0))


def raw_batch(h, w, n=3, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    return np.stack([cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 2)
                     for _ in range(n)])


def test_every_format_answers_raw_pixels_like_keras(setup):
    """Each format, on raw uint8 images of sizes the export never checked, gives the Keras
    model's probabilities on the written-out preprocessing (tolerance 1e-4)."""
    export, model = setup["export"], setup["model"]
    assert export == setup["run"].path / "export"
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    meta = json.loads((export / "export.json").read_text())
    assert meta["formats"] == {"savedmodel": "savedmodel", "onnx": "model.onnx",
                               "litert": "model.tflite"}
    assert meta["labels"] == LABELS and meta["outputs"] == "probabilities"
    assert meta["preprocessing"] == {"resize_to": [CACHE, CACHE], "center_crop": [SIZE, SIZE],
                                     "output_size": None, "channels": 3, "normalization": "imagenet"}
    assert all(meta["check"][f]["max_abs_diff"] <= 1e-4 for f in meta["formats"])
    assert json.loads((export / "savedmodel" / "assets.extra" / "export.json").read_text()) == meta
    for h, w, seed in ((61, 47, 1), (CACHE, CACHE, 2), (20, 90, 3)):
        x = raw_batch(h, w, seed=seed)
        expected = keras_probabilities(model, x)
        for name in meta["formats"].values():
            got = load_exported(export / name)(x)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4, err_msg=f"{name} {h}x{w}")


def test_savedmodel_signatures(setup):
    """serving_default (what TF Serving calls), uint16 and encoded bytes agree with serve."""
    import cv2

    loaded = tf.saved_model.load(str(setup["export"] / "savedmodel"))
    x = raw_batch(50, 41, n=2, seed=4)
    expected = loaded.serve(tf.constant(x)).numpy()
    sig = loaded.signatures["serving_default"]
    (name, spec), = sig.structured_input_signature[1].items()
    assert spec.dtype == tf.uint8 and spec.shape.rank == 3
    np.testing.assert_allclose(next(iter(sig(**{name: tf.constant(x)}).values())).numpy(),
                               expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.serve_uint16(tf.constant(x.astype(np.uint16) * 257)).numpy(),
                               expected, rtol=0, atol=1e-6)
    files = [cv2.imencode(".png", x[0])[1].tobytes(),  # 8-bit grey
             cv2.imencode(".png", x[1].astype(np.uint16) * 257)[1].tobytes(),  # 16-bit grey
             cv2.imencode(".png", cv2.cvtColor(x[0], cv2.COLOR_GRAY2BGR))[1].tobytes()]  # RGB
    got = loaded.serve_bytes(tf.constant(files)).numpy()
    np.testing.assert_allclose(got, expected[[0, 1, 0]], rtol=0, atol=1e-6)
    jpeg = cv2.imencode(".jpg", x[0])[1]
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(loaded.serve_bytes(tf.constant([jpeg.tobytes()])).numpy(),
                               loaded.serve(tf.constant(decoded[None])).numpy(), rtol=0, atol=1e-6)


def test_export_replaces_existing_folder(setup, tmp_path):
    out = tmp_path / "sm"
    (out / "stale").mkdir(parents=True)
    assert export_run(setup["run"].path, out) == out
    assert not (out / "stale").exists() and (out / "savedmodel" / "saved_model.pb").exists()
    assert not (out / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


def test_failed_check_leaves_nothing(setup, tmp_path):
    spec = dict(resize_to=[CACHE, CACHE], center_crop=[SIZE, SIZE], channels=3)
    with pytest.raises(ExportMismatch, match="savedmodel"):
        export_model(setup["model"], tmp_path / "sm", spec, atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="tflite.*known: savedmodel, onnx, litert"):
        export_run(setup["run"].path, tmp_path / "x", formats="savedmodel,tflite")


def test_missing_onnx_extra_is_named(setup, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(MissingExtra, match=r'tf2onnx.*pip install "cxr-keras\[onnx\]"'):
        export_run(setup["run"].path, tmp_path / "x", formats="onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_best_keras_names_path(tmp_path):
    run = RunFolder(tmp_path / "empty_run")
    with pytest.raises(DataError, match=str(run.checkpoints / "best.keras").replace(".", r"\.")):
        export_run(run.path)


def test_lambda_layer_refused_in_safe_mode(tmp_path):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ValueError, match="(?i)lambda|safe_mode"):
        keras.saving.load_model(path, safe_mode=True)
    write_image(tmp_path / "img.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="lambda.keras"):
        predict_folder(path, tmp_path, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_predict_folder_agrees_across_formats(setup):
    root, export = setup["root"], setup["export"]
    models = {"keras": setup["run"].checkpoints / "best.keras", "export": export,
              "savedmodel": export / "savedmodel", "onnx": export / "model.onnx",
              "litert": export / "model.tflite"}
    tables = {k: _read_csv(predict_folder(m, setup["images"], root / f"{k}.csv", batch_size=3))
              for k, m in models.items()}
    head, paths, pk = tables["keras"]
    assert head == ["path", *LABELS]
    assert paths == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png", "sub/a.jpg",
                     "sub/b.dcm", "sub/c.dcm"]
    assert pk.shape == (8, 3) and np.all((pk > 0) & (pk < 1))
    for name, (h, p, probs) in tables.items():
        assert (h, p) == (head, paths), name
        np.testing.assert_allclose(probs, pk, rtol=0, atol=1e-4, err_msg=name)
    from cxr_keras.data.images import read_image

    for name in ("img2.png", "sub/c.dcm"):
        img = read_image(setup["images"] / name)
        np.testing.assert_allclose(pk[paths.index(name)],
                                   keras_probabilities(setup["model"], [img])[0], atol=1e-5)


def test_predict_with_tta_keras_and_savedmodel_agree(setup):
    root = setup["root"]
    a = predict_folder(setup["run"].checkpoints / "best.keras", setup["images"],
                       root / "tta_keras.csv", tta=True, batch_size=3)
    b = predict_folder(setup["export"] / "savedmodel", setup["images"], root / "tta_sm.csv",
                       tta=True, batch_size=4)
    plain = _read_csv(predict_folder(setup["export"], setup["images"], root / "plain.csv"))[2]
    np.testing.assert_allclose(_read_csv(a)[2], _read_csv(b)[2], rtol=0, atol=1e-5)
    assert np.abs(_read_csv(a)[2] - plain).max() > 1e-4  # the views change something
    with pytest.raises(DataError, match="test-time augmentation"):
        predict_folder(setup["export"] / "model.onnx", setup["images"], root / "x.csv", tta=True)


def test_unreadable_image_stops_or_is_skipped(setup, tmp_path):
    write_image(tmp_path / "ok.png", np.zeros((30, 30), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(DataError, match="broken.dcm"):
        predict_folder(setup["export"], tmp_path, tmp_path / "out" / "p.csv")
    assert not (tmp_path / "out").exists()
    out = predict_folder(setup["export"], tmp_path, tmp_path / "p.csv", on_error="skip")
    assert _read_csv(out)[1] == ["ok.png"]
    with open(tmp_path / "p.csv.errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows] == ["path", "broken.dcm", "broken.png"]
    assert "broken.png" in rows[2][1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG"):
        predict_folder(setup["export"], tmp_path / "empty", tmp_path / "p.csv")


def test_dicom_without_suffix_is_found(setup, tmp_path):
    img = raw_batch(40, 36, n=1, seed=8)[0]
    write_dicom(tmp_path / "series" / "IM0001.dcm", img)
    (tmp_path / "series" / "IM0001.dcm").rename(tmp_path / "series" / "IM0001")
    (tmp_path / "series" / "README").write_text("not an image")
    out = predict_folder(setup["export"], tmp_path, tmp_path / "p.csv")
    head, paths, probs = _read_csv(out)
    assert paths == ["series/IM0001"]
    from cxr_keras.data.images import read_dicom

    np.testing.assert_allclose(probs[0], keras_probabilities(
        setup["model"], [read_dicom(tmp_path / "series" / "IM0001")])[0], atol=1e-4)


def test_fresh_process_reload_and_cli(setup):
    """In parallel: a fresh process reloads best.keras (safe_mode) with identical outputs; the CLI's
    export and predict commands exit 0; export of a folder without best.keras exits 2."""
    root, run = setup["root"], setup["run"]
    x = np.random.default_rng(9).normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)
    np.save(root / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import cxr_keras  # registers our serialisables (FusedBatchNormalization, FZLPR)
        m = keras.saving.load_model({str(run.checkpoints / "best.keras")!r}, safe_mode=True)
        np.save({str(root / "y.npy")!r}, m.predict_on_batch(np.load({str(root / "x.npy")!r})))
    """)
    cli = [console_script()]
    cmds = {
        "reload": [sys.executable, "-c", script],
        "export": cli + ["export", str(run.path), "--out", str(root / "cli_sm"),
                         "--format", "savedmodel,litert"],
        "predict": cli + ["predict", str(run.checkpoints / "best.keras"), str(setup["images"]),
                          "--out", str(root / "cli.csv"), "--tta", "--batch-size", "2"],
        "missing": cli + ["export", str(root / "nowhere")],
    }
    procs = {k: subprocess.Popen(c, env=ENV, cwd=root, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, c in cmds.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=180)
        if name == "missing":
            assert p.returncode == 2 and "best.keras" in err, err[-3000:]
        else:
            assert p.returncode == 0, f"{name}: {err[-3000:]}"
    np.testing.assert_array_equal(np.load(root / "y.npy"), setup["model"].predict_on_batch(x))
    assert (root / "cli_sm" / "savedmodel" / "saved_model.pb").exists()
    assert (root / "cli_sm" / "model.tflite").exists()
    assert json.loads((root / "cli_sm" / "export.json").read_text())["labels"] == LABELS
    ref = predict_folder(setup["export"] / "savedmodel", setup["images"], root / "ref.csv", tta=True)
    np.testing.assert_allclose(_read_csv(root / "cli.csv")[2], _read_csv(ref)[2], atol=1e-5)


def test_a_mixed_precision_model_is_served_in_float32(tmp_path):
    """Trained under mixed bfloat16 (the CPU default where it is native) or float16 (GPUs): the
    export serves a float32 copy with the same weights (ONNX Runtime and LiteRT CPU kernels take
    neither half type), checked in every format; close to the half-precision model itself."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_model()
    finally:
        keras.config.set_dtype_policy(previous)
    spec = dict(resize_to=[CACHE, CACHE], center_crop=[SIZE, SIZE], output_size=None, channels=3,
                normalization="imagenet")
    out = export_model(model, tmp_path / "export", spec, formats="all")
    meta = json.loads((out / "export.json").read_text())
    assert "mixed_bfloat16" in meta["trained_dtype_policies"]
    x = raw_batch(45, 39, n=2, seed=12)
    half = keras_probabilities(model, x)
    for name in meta["formats"].values():
        got = load_exported(out / name)(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, half, rtol=0, atol=3e-2, err_msg=name)


def test_a_segmenter_exports_maps_and_predict_refuses_them(setup, tmp_path):
    inp = keras.Input((SIZE, SIZE, 3))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    spec = dict(resize_to=[CACHE, CACHE], center_crop=[SIZE, SIZE], output_size=None, channels=3,
                normalization="imagenet")
    export = export_model(keras.Model(inp, out), tmp_path / "seg", spec)
    assert json.loads((export / "export.json").read_text())["output_shape"] == [None, SIZE, SIZE, 1]
    with pytest.raises(DataError, match="a map, not one probability per label"):
        predict_folder(export, setup["images"], tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
