"""SavedModel export of a run, safe .keras reloading, and folder prediction (.keras and SavedModel)."""

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

from cxr_keras.data.images import write_dicom, write_image
from cxr_keras.export import ExportMismatch, export_run, export_savedmodel
from cxr_keras.inference.predict import predict_folder
from cxr_keras.io import DataError
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
    (images / "notes.txt").write_text("not an image")
    export = export_run(run.path)
    return dict(root=root, run=run, model=model, images=images, export=export)


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_export_run_savedmodel_matches_keras(setup):
    export, model = setup["export"], setup["model"]
    assert export == setup["run"].path / "export" / "savedmodel"
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    meta = json.loads((export / "export.json").read_text())
    assert meta["labels"] == LABELS and meta["normalization"] == "imagenet"
    assert meta["input_shape"] == [None, SIZE, SIZE, 3] and meta["input_size"] == [SIZE, SIZE]
    assert meta["output_names"] == ["output_0"] and meta["max_abs_diff"] <= 1e-5
    assert meta["preprocessing"]["resize_to"] == CACHE and meta["preprocessing"]["center_crop"] == SIZE
    x = np.random.default_rng(5).normal(size=(5, SIZE, SIZE, 3)).astype(np.float32)
    loaded = tf.saved_model.load(str(export))
    got = loaded.serve(tf.constant(x)).numpy()
    expected = model.predict(x, verbose=0)
    assert got.shape == (5, len(LABELS))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    sig = loaded.signatures["serving_default"](image=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(sig, expected, rtol=0, atol=1e-5)
    # Dropout is off at serving time: two calls agree exactly.
    np.testing.assert_array_equal(loaded.serve(tf.constant(x)).numpy(), got)


def test_export_replaces_existing_folder(setup, tmp_path):
    out = tmp_path / "sm"
    (out / "stale").mkdir(parents=True)
    assert export_run(setup["run"].path, out) == out
    assert not (out / "stale").exists() and (out / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


def test_failed_check_leaves_nothing(setup, tmp_path):
    x = np.zeros((2, SIZE, SIZE, 3), np.float32)
    with pytest.raises(ExportMismatch):
        export_savedmodel(setup["model"], tmp_path / "sm", check_inputs=x, atol=-1.0)
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


@pytest.mark.parametrize("tta", [False, True])
def test_predict_folder_keras_and_savedmodel_agree(setup, tta):
    root = setup["root"]
    a = predict_folder(setup["run"].checkpoints / "best.keras", setup["images"],
                       root / f"keras_{tta}.csv", tta=tta, batch_size=3)
    b = predict_folder(setup["export"], setup["images"], root / f"sm_{tta}.csv", tta=tta,
                       batch_size=4)
    head_a, paths_a, pa = _read_csv(a)
    head_b, paths_b, pb = _read_csv(b)
    assert head_a == head_b == ["path", *LABELS]
    assert paths_a == paths_b == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png",
                                  "sub/a.jpg", "sub/b.dcm"]
    assert pa.shape == (7, 3) and np.all((pa > 0) & (pa < 1))
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-5)


def test_predict_folder_matches_manual_preprocessing(setup):
    """resize to the cache size (bicubic, uint8), centre crop, grey x3, ImageNet, sigmoid."""
    import cv2
    from scipy.special import expit

    from cxr_keras.data.images import read_image

    out = predict_folder(setup["export"], setup["images"], setup["root"] / "manual.csv")
    _, paths, probs = _read_csv(out)
    img = cv2.resize(read_image(setup["images"] / "img2.png"), (CACHE, CACHE),
                     interpolation=cv2.INTER_CUBIC)
    o = (CACHE - SIZE) // 2
    x = np.repeat(img[o:o + SIZE, o:o + SIZE, None].astype(np.float32), 3, axis=-1)
    x = (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                               np.float32)
    expected = expit(setup["model"].predict(x[None].astype(np.float32), verbose=0)[0])
    np.testing.assert_allclose(probs[paths.index("img2.png")], expected, atol=1e-5)
    with_labels = predict_folder(setup["export"], setup["images"], setup["root"] / "l.csv",
                                 labels=["a", "b", "c"])
    assert _read_csv(with_labels)[0] == ["path", "a", "b", "c"]


def test_unreadable_image_named(setup, tmp_path):
    write_image(tmp_path / "ok.png", np.zeros((30, 30), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        predict_folder(setup["export"], tmp_path, tmp_path / "out" / "p.csv")
    assert not (tmp_path / "out" / "p.csv").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG"):
        predict_folder(setup["export"], tmp_path / "empty", tmp_path / "p.csv")


def test_fresh_process_reload_and_cli(setup):
    """In parallel: a fresh process reloads best.keras (safe_mode) with identical outputs; the CLI's
    export and predict commands exit 0; export of a folder without best.keras exits 2."""
    root, run = setup["root"], setup["run"]
    x = np.random.default_rng(9).normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)
    np.save(root / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        m = keras.saving.load_model({str(run.checkpoints / "best.keras")!r}, safe_mode=True)
        np.save({str(root / "y.npy")!r}, m.predict_on_batch(np.load({str(root / "x.npy")!r})))
    """)
    cli = [console_script()]
    cmds = {
        "reload": [sys.executable, "-c", script],
        "export": cli + ["export", str(run.path), "--out", str(root / "cli_sm")],
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
    assert (root / "cli_sm" / "saved_model.pb").exists()
    assert json.loads((root / "cli_sm" / "export.json").read_text())["labels"] == LABELS
    ref = predict_folder(setup["export"], setup["images"], root / "ref.csv", tta=True)
    np.testing.assert_allclose(_read_csv(root / "cli.csv")[2], _read_csv(ref)[2], atol=1e-5)
