"""Detection AP / mAP against hand-worked boxes."""

import numpy as np
import pytest

from cxr_keras.evaluation.detection import average_precision, box_iou, detection_ap
from cxr_keras.io import DataError


def test_box_iou_by_hand():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])


def _example():
    # class 0 ("Active"): image 0 has two boxes, image 1 one; class 1 ("Latent"): one box, image 1
    gt = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [0, 0]},
          {"boxes": [[0, 0, 10, 10], [40, 40, 50, 50]], "labels": [0, 1]}]
    pred = [{"boxes": [[0, 0, 10, 10],        # 0.9: TP
                       [25, 20, 35, 30],      # 0.8: IoU 1/3 with box 2 -> FP
                       [21, 20, 31, 30],      # 0.6: IoU 0.82 -> TP
                       [0, 0, 10, 9]],        # 0.5: duplicate of a matched box -> FP
             "scores": [0.9, 0.8, 0.6, 0.5], "labels": [0, 0, 0, 0]},
            {"boxes": [[1, 0, 11, 10], [40, 40, 50, 50], [0, 0, 5, 5]],
             "scores": [0.7, 0.3, 0.95], "labels": [0, 0, 1]}]   # 0.7: TP; 0.3: wrong class, FP
    return pred, gt


def test_ap_and_map_by_hand():
    pred, gt = _example()
    out = detection_ap(pred, gt, ["Active", "Latent"], interpolation="voc")
    # Active, by score: TP .9, FP .8, TP .7, TP .6, FP .5, FP .3 over 3 boxes
    # precision 1, 1/2, 2/3, 3/4, ...; recall 1/3, 1/3, 2/3, 1 -> envelope 1, .75, .75
    assert out["per_class"]["Active"] == pytest.approx(1 / 3 + 0.75 * 2 / 3)
    assert out["per_class"]["Latent"] == 0.0   # its only detection misses (IoU 0)
    assert out["mAP"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert out["n_gt"] == {"Active": 3, "Latent": 1}
    coco = detection_ap(pred, gt, ["Active", "Latent"])["per_class"]["Active"]
    assert coco == pytest.approx((34 * 1.0 + 67 * 0.75) / 101)   # recall points 0..0.33 at 1


def test_a_class_without_boxes_is_left_out_and_bad_input_is_named():
    pred, gt = _example()
    out = detection_ap(pred, gt, ["Active", "Latent", "Other"])
    assert np.isnan(out["per_class"]["Other"]) and out["mAP"] == pytest.approx(
        np.mean([out["per_class"]["Active"], out["per_class"]["Latent"]]))
    assert average_precision([], 2) == 0.0
    bad = [dict(pred[0], scores=[0.9]), pred[1]]
    with pytest.raises(DataError, match=r"predictions\[0\]: 4 boxes but 1 scores"):
        detection_ap(bad, gt, ["Active"])
    with pytest.raises(DataError, match=r"ground_truth\[1\]: a box with x2 <= x1"):
        detection_ap(pred, [gt[0], {"boxes": [[5, 5, 5, 9]], "labels": [0]}], ["Active"])
