"""One check for the export of a paper's run: every format answers raw pixels as the Keras model
does on the Python preprocessing (cxr_keras.inference.predict.preprocess, itself checked against
the written-out pipeline in test_export and test_raw_image)."""

import json

import cv2
import numpy as np
from scipy.special import expit

from cxr_keras.export import export_run, load_exported, load_keras_model, output_activation
from cxr_keras.inference.predict import preprocess


def spec(resize_to, center_crop=None, output_size=None, normalization="imagenet", channels=3):
    """A paper's evaluation preprocessing as export.json writes it (square sides given as ints)."""
    def pair(v):
        return None if v is None else [v, v] if isinstance(v, int) else list(v)
    return dict(resize_to=pair(resize_to), center_crop=pair(center_crop),
                output_size=pair(output_size), channels=channels, normalization=normalization)


def assert_exports_answer_raw_pixels(run_dir, out, preprocessing, labels=None, atol=1e-4):
    """Export ``run_dir`` in every format to ``out``; its preprocessing must be ``preprocessing``
    (the paper's evaluation convention) and each format must give the Keras model's
    probabilities on two raw images of a size the export never checked. Returns export.json."""
    export = export_run(run_dir, out, formats="all")
    meta = json.loads((export / "export.json").read_text())
    assert meta["preprocessing"] == preprocessing
    if labels is not None:
        assert meta["labels"] == labels
    assert set(meta["check"]) == {"savedmodel", "onnx", "litert"}
    assert all(c["max_abs_diff"] <= atol for c in meta["check"].values()), meta["check"]
    h, w = preprocessing["resize_to"]
    rng = np.random.default_rng(11)
    raw = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (h + 13, w - 7), dtype=np.uint8),
                                     (0, 0), 2) for _ in range(2)])
    model = load_keras_model(run_dir / "checkpoints" / "best.keras")
    expected = np.asarray(model.predict(np.stack([preprocess(i, preprocessing) for i in raw]),
                                        verbose=0), np.float64)
    expected = expected if output_activation(model) else expit(expected)
    for fmt, name in meta["formats"].items():
        got = load_exported(export / name)(raw)
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=fmt)
    return meta
