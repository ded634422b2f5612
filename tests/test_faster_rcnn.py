"""Faster R-CNN: RoI targets by hand, keras.ops box coding against NumPy, a detector that finds
synthetic boxes well above image-blind box priors, reload in safe mode, a training step on JAX."""

import importlib.util
import os

import keras
import numpy as np

from cxr_keras.evaluation.detection import detection_ap
from cxr_keras.models.anchors import encode
from cxr_keras.models.backbones import multiscale_backbone
from cxr_keras.models.faster_rcnn import FasterRCNN, encode_ops, rpn_targets

from _baselines import box_prior_predictions  # tests/ is on sys.path under pytest
from _models import last_json, run_on_jax

HAS_JAX = importlib.util.find_spec("jax") is not None
SIZE, G = 64, 2


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    backbone = multiscale_backbone("resnet18", input_shape=(SIZE, SIZE, 3), widths=(8, 16, 32, 32))
    return FasterRCNN(backbone, num_classes=2, anchor_sizes=(16, 24, 32), anchor_ratios=(1.0,),
                      rpn_channels=32, proposals=16, head_units=64)


def test_encode_ops_matches_numpy_and_roi_targets_by_hand():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 30, size=(5, 2))
    anchors = np.concatenate([a, a + rng.uniform(5, 20, size=(5, 2))], 1).astype("float32")
    boxes = anchors + rng.uniform(-2, 2, size=anchors.shape).astype("float32")
    np.testing.assert_allclose(np.asarray(encode_ops(anchors, boxes, (10, 10, 5, 5))),
                               encode(anchors, boxes, (10, 10, 5, 5)), atol=1e-4)
    model = _model()
    rois = np.array([[[0, 0, 10, 10], [0, 0, 10, 4], [30, 30, 40, 40], [31, 30, 41, 40]]],
                    "float32")
    gt = np.array([[[0, 0, 10, 10], [30, 30, 40, 40]]], "float32")
    labels, targets, positive = model.roi_targets(rois, gt, np.array([[1, 0]]))
    # IoU 1 -> class 1 (+1 for background); 0.4 -> background; IoU 1 and 0.82 -> class 0
    assert np.asarray(labels).tolist() == [[2, 0, 1, 1]]
    assert np.asarray(positive).tolist() == [[True, False, True, True]]
    np.testing.assert_allclose(np.asarray(targets)[0, 3],
                               encode(rois[0, 3:4], gt[0, 1:2], (10, 10, 5, 5))[0], atol=1e-5)
    # a padded box (label -1) is never matched
    labels, _, _ = model.roi_targets(rois, gt, np.array([[1, -1]]))
    assert np.asarray(labels).tolist() == [[2, 0, 0, 0]]


def _data(n, seed):
    """Bright filled squares (class 0) and hollow squares (class 1), one or two per image."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.2, size=(n, SIZE, SIZE, 3)).astype("float32")
    boxes = np.zeros((n, G, 4), "float32")
    labels = -np.ones((n, G), "int32")
    for i in range(n):
        k = 1 + int(rng.random() < 0.5)
        slots = rng.permutation([(4, 4), (36, 36), (4, 36), (36, 4)])[:k]
        for j, (y0, x0) in enumerate(slots):
            s = int(rng.integers(16, 25))
            y0, x0 = y0 + int(rng.integers(0, 4)), x0 + int(rng.integers(0, 4))
            c = int(rng.integers(0, 2))
            x[i, y0:y0 + s, x0:x0 + s] += 1.5
            if c == 1:
                x[i, y0 + 4:y0 + s - 4, x0 + 4:x0 + s - 4] -= 1.5
            boxes[i, j] = [x0, y0, x0 + s, y0 + s]
            labels[i, j] = c
    return x, boxes, labels


def _inputs(model, x, boxes, labels, seed=0):
    rng = np.random.default_rng(seed)
    lab, tgt = zip(*(rpn_targets(model.anchors, b[l >= 0], (SIZE, SIZE), rng=rng)
                     for b, l in zip(boxes, labels)))
    return {"image": x, "gt_boxes": boxes, "gt_labels": labels,
            "rpn_labels": np.stack(lab), "rpn_targets": np.stack(tgt)}


def test_detector_finds_synthetic_boxes_well_above_chance(tmp_path):
    model = _model()
    x, boxes, labels = _data(160, 0)
    model.compile(keras.optimizers.Adam(2e-3))
    hist = model.fit(_inputs(model, x[:128], boxes[:128], labels[:128]), batch_size=16,
                     epochs=30, verbose=0).history
    assert {"rpn_cls", "rpn_box", "roi_cls", "roi_box", "loss"} <= set(hist)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0], hist["loss"]
    dets = model.detect(x[128:])
    gt = [{"boxes": b[l >= 0], "labels": l[l >= 0]} for b, l in zip(boxes[128:], labels[128:])]
    result = detection_ap(dets, gt, ["filled", "hollow"])
    # baselines that ignore the image, score 1 at every test image: nothing, each class's mean
    # training box, and its mean training box nearest each quadrant's centre (the squares sit
    # in the corners, so this one finds some: measured mAP 0.21)
    quadrants = [(a * SIZE / 4, b * SIZE / 4) for a in (1, 3) for b in (1, 3)]
    priors = {"mean box": box_prior_predictions(boxes[:128], labels[:128], 32, 2),
              "quadrant boxes": box_prior_predictions(boxes[:128], labels[:128], 32, 2, quadrants)}
    baseline = {k: detection_ap(v, gt, ["filled", "hollow"])["mAP"] for k, v in priors.items()}
    baseline["nothing found"] = 0.0
    margin = 0.3
    assert result["mAP"] > max(baseline.values()) + margin, (
        f"mAP {result['mAP']:.3f}, not {margin} above the box priors {baseline}: {result}")
    path = tmp_path / "frcnn.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x[:2])["cls_logits"]),
                               np.asarray(model(x[:2])["cls_logits"]), atol=1e-5)


JAX_CHECK = r"""
import json, sys, numpy as np, keras
sys.path.insert(0, "TESTS")
import test_faster_rcnn as t
m = t._model()
x, b, l = t._data(8, 1)
m.compile(keras.optimizers.Adam(1e-3))
h = m.fit(t._inputs(m, x, b, l), batch_size=4, epochs=2, verbose=0).history
print(json.dumps({"backend": keras.backend.backend(), "loss": h["loss"]}))
"""


def test_faster_rcnn_trains_on_the_jax_backend():
    if not HAS_JAX:
        import pytest
        pytest.skip("jax is not installed")
    code = JAX_CHECK.replace("TESTS", os.path.dirname(os.path.abspath(__file__)))
    info = last_json(run_on_jax(code))
    assert info["backend"] == "jax" and np.isfinite(info["loss"]).all(), info
