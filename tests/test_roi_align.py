"""RoI Align against a NumPy transcription of torchvision's CPU kernel."""

import numpy as np
import pytest

from cxr_keras.layers.roi_align import RoIAlign, roi_align


def _bilinear(f, y, x):
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= h - 1:
        y_lo = y_hi = h - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= w - 1:
        x_lo = x_hi = w - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    return ((1 - ly) * (1 - lx) * f[y_lo, x_lo] + (1 - ly) * lx * f[y_lo, x_hi]
            + ly * (1 - lx) * f[y_hi, x_lo] + ly * lx * f[y_hi, x_hi])


def _numpy_roi_align(f, box, size, scale, ratio, aligned):
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * scale - off for v in box)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / size, rw / size
    out = np.zeros((size, size, f.shape[2]))
    for ph in range(size):
        for pw in range(size):
            acc = 0.0
            for iy in range(ratio):
                y = y1 + ph * bh + (iy + 0.5) * bh / ratio
                for ix in range(ratio):
                    x = x1 + pw * bw + (ix + 0.5) * bw / ratio
                    acc = acc + _bilinear(f, y, x)
            out[ph, pw] = acc / (ratio * ratio)
    return out


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_against_numpy(aligned):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 6, 7, 3)).astype("float32")
    boxes = np.array([[[8, 8, 56, 40], [-20, -10, 30, 30], [90, 70, 130, 110]],   # inside, across
                      [[0, 0, 112, 96], [33, 17, 35, 19], [100, 5, 111, 95]]],   # the border, tiny
                     "float32")
    got = np.asarray(roi_align(feats, boxes, output_size=4, spatial_scale=1 / 16,
                               sampling_ratio=2, aligned=aligned))
    assert got.shape == (2, 3, 4, 4, 3)
    for b in range(2):
        for r in range(3):
            ref = _numpy_roi_align(feats[b].astype(np.float64), boxes[b, r], 4, 1 / 16, 2, aligned)
            np.testing.assert_allclose(got[b, r], ref, atol=1e-5, err_msg=f"image {b} box {r}")
    layer = RoIAlign(output_size=4, sampling_ratio=2)
    np.testing.assert_allclose(np.asarray(layer([feats, boxes])), got if aligned else
                               np.asarray(roi_align(feats, boxes, 4, 1 / 16, 2, True)), atol=1e-6)
    assert RoIAlign.from_config(layer.get_config()).output_size == 4
