"""Faster R-CNN anchors, box coding, anchor targets, smooth L1 and NMS against hand-worked boxes."""

import math

import numpy as np

from cxr_keras.models.anchors import assign_targets, decode, encode, generate_anchors, nms, smooth_l1


def test_anchors_by_hand():
    a = generate_anchors((2, 2), 16, sizes=(32,), ratios=(1.0, 2.0))
    assert a.shape == (8, 4)
    np.testing.assert_allclose(a[0], [-8, -8, 24, 24])                    # cell (0, 0), 32 x 32
    w, h = 32 / math.sqrt(2), 32 * math.sqrt(2)                          # ratio 2 = tall
    np.testing.assert_allclose(a[1], [8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2], rtol=1e-6)
    np.testing.assert_allclose(a[2], [8, -8, 40, 24])                     # cell (0, 1)
    np.testing.assert_allclose(a[4], [-8, 8, 24, 40])                     # cell (1, 0)


def test_encode_by_hand_and_decode_inverts_it():
    t = encode([[0, 0, 10, 10]], [[2, 2, 12, 22]])
    np.testing.assert_allclose(t, [[0.2, 0.7, 0.0, math.log(2)]], rtol=1e-6)
    rng = np.random.default_rng(0)
    anchors = generate_anchors((3, 3), 8, sizes=(16,), ratios=(0.5, 1, 2))
    boxes = anchors + rng.uniform(-3, 3, size=anchors.shape).astype("float32")
    for w in ((1, 1, 1, 1), (10, 10, 5, 5)):
        back = np.asarray(decode(anchors, encode(anchors, boxes, w), w))
        np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_anchor_targets_by_hand():
    anchors = [[0, 0, 10, 10],     # IoU 1 with box 0: positive
               [0, 0, 10, 5],      # IoU 0.5: ignored
               [50, 50, 60, 60],   # IoU 0: negative
               [1, 0, 11, 10]]     # IoU 90/110 = 0.82: positive
    gt = [[0, 0, 10, 10], [100, 100, 120, 120]]  # box 1 overlaps no anchor: no forced positive
    labels, targets, matched = assign_targets(anchors, gt)
    assert labels.tolist() == [1, -1, 0, 1] and matched.tolist() == [0, -1, -1, 0]
    np.testing.assert_allclose(targets[3], encode([anchors[3]], [gt[0]])[0])
    np.testing.assert_array_equal(targets[[0, 1, 2]][1:], 0)
    # a box whose best anchor is below 0.7 still gets that anchor (ties included)
    labels, _, matched = assign_targets([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]],
                                        [[0, 0, 10, 20]])
    assert labels.tolist() == [1, 1, 0] and matched.tolist() == [0, 0, -1]
    # sampling: at most batch_size, at most half positive
    labels, _, _ = assign_targets(anchors, gt, batch_size=2, rng=np.random.default_rng(1))
    assert (labels == 1).sum() == 1 and (labels == 0).sum() == 1
    # outside anchors are never used; no boxes: every valid anchor negative
    labels, _, _ = assign_targets(anchors, np.zeros((0, 4)), valid=[True, False, True, True])
    assert labels.tolist() == [0, -1, 0, 0]


def test_smooth_l1_against_numpy():
    t = np.zeros((2, 4), "float32")
    p = np.array([[0.05, -0.5, 2.0, 0.0], [0.1, 0.2, -0.01, 1.0]], "float32")
    beta = 1 / 9
    d = np.abs(p)
    expected = np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum(-1)
    np.testing.assert_allclose(np.asarray(smooth_l1(t, p)), expected, rtol=1e-6)


def test_nms_by_hand():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]
    scores = [0.9, 0.8, 0.7, 0.95]
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.85).tolist() == [3, 1, 2]   # IoU 0.82 is kept at 0.85
    assert nms(boxes, scores, 0.5, max_output=1).tolist() == [3]
    assert nms(np.zeros((0, 4)), []).tolist() == []
