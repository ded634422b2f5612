"""Test-time augmentation views and averaging; Grad-CAM heatmaps and overlays."""

import cv2
import keras
import numpy as np
import pytest
from scipy.special import expit

from cxr_keras.explain import grad_cam, overlay
from cxr_keras.inference import TTAPredictor, apply_view, cumulative_means, zoom_images
from cxr_keras.models import densenet121_fzlpr

# ----------------------------------------------------------------------------------------------
# TTA

def flip_invariant_model(c=3):
    """Pointwise conv + global average: invariant to horizontal flips, not to zooms."""
    inp = keras.Input((20, 20, 3))
    x = keras.layers.Conv2D(8, 1, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(c)(x))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (5, 20, 20, 3)).astype(np.float32)


def test_hflip_view_is_a_mirror(images):
    np.testing.assert_array_equal(np.asarray(apply_view(images, "hflip")), images[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(apply_view(images, "original")), images)
    with pytest.raises(ValueError):
        apply_view(images, "vflip")


def test_zoom_in_is_central_crop_resized():
    x = np.random.default_rng(1).uniform(0, 1, (2, 22, 22, 1)).astype(np.float32)
    got = np.asarray(apply_view(x, "zoom_in", zoom=0.1))          # scale 1.1: crop 20 of 22
    for i in range(2):
        ref = cv2.resize(x[i, 1:21, 1:21, 0], (22, 22), interpolation=cv2.INTER_LINEAR)
        # Edge pixels differ: OpenCV clamps at the crop border, the zoom reads the real pixels.
        np.testing.assert_allclose(got[i, 1:-1, 1:-1, 0], ref[1:-1, 1:-1], atol=1e-5)


def test_zoom_out_is_shrink_and_edge_pad():
    x = np.random.default_rng(2).uniform(0, 1, (1, 20, 20, 1)).astype(np.float32)
    got = np.asarray(apply_view(x, "zoom_out", zoom=0.1))[0, ..., 0]  # scale 0.9: 20 -> 18
    ref = cv2.resize(x[0, ..., 0], (18, 18), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got[1:19, 1:19], ref, atol=1e-5)
    # Border filled from the edge pixels ("nearest"): equals the input's edge rows/columns.
    np.testing.assert_allclose(got[0, 0], x[0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[-1, -1], x[0, -1, -1, 0], atol=1e-6)
    # Linear ramp: out(x) = c + (x - c) / 0.9 clipped to the image (c = 9.5).
    ramp = np.tile(np.arange(20, dtype=np.float32), (20, 1))[None, ..., None]
    out = np.asarray(zoom_images(ramp, 0.9))[0, 5, :, 0]
    np.testing.assert_allclose(out, np.clip(9.5 + (np.arange(20) - 9.5) / 0.9, 0, 19), atol=1e-4)


def test_flip_invariant_model_and_mean_over_views(images):
    keras.utils.set_random_seed(0)
    model = flip_invariant_model()
    tta = TTAPredictor(model)
    views = tta.predict_views(images, batch_size=2)
    assert list(views) == ["original", "hflip", "zoom_in", "zoom_out"]
    np.testing.assert_allclose(views["original"], views["hflip"], atol=1e-6)
    assert not np.allclose(views["original"], views["zoom_in"], atol=1e-4)
    logits = model.predict_on_batch(images)
    np.testing.assert_allclose(views["original"], expit(logits), rtol=1e-5)
    np.testing.assert_allclose(tta.predict(images, batch_size=3),
                               np.mean([views[v] for v in views], axis=0), rtol=1e-6)
    # An iterable of (x, y) batches gives the same as the array.
    batches = [(images[:2], None), (images[2:], None)]
    np.testing.assert_allclose(TTAPredictor(model, views=("original", "zoom_out")).predict(batches),
                               (views["original"] + views["zoom_out"]) / 2, rtol=1e-5)
    with pytest.raises(ValueError):
        TTAPredictor(model, views=("rotate",))


def test_cumulative_means_table3_steps():
    v = {"original": np.array([[0.2]]), "hflip": np.array([[0.4]]),
         "zoom_in": np.array([[0.9]]), "zoom_out": np.array([[0.5]])}
    out = cumulative_means(v)
    assert list(out) == ["original", "original+hflip", "original+hflip+zoom_in+zoom_out"]
    np.testing.assert_allclose([out[k][0, 0] for k in out], [0.2, 0.3, 0.5])
    assert list(cumulative_means(v, steps=[["zoom_in"]])) == ["zoom_in"]
    with pytest.raises(KeyError):
        cumulative_means({"original": v["original"]})


# ----------------------------------------------------------------------------------------------
# Grad-CAM

def region_model(size=12, pool=1, sign=1.0):
    """Class c score = sign * sum of feature channel c over region R_c (R_0 top-left, R_1
    bottom-right quadrant of the feature map). Feature layer "feat" = ReLU(identity 1x1 conv)."""
    inp = keras.Input((size * pool, size * pool, 2))
    x = keras.layers.AveragePooling2D(pool)(inp) if pool > 1 else inp
    feat = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="feat")
    x = feat(x)
    dense = keras.layers.Dense(2, use_bias=False, name="score")
    out = dense(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    feat.set_weights([np.eye(2, dtype=np.float32)[None, None]])
    w = np.zeros((size, size, 2, 2), np.float32)
    h = size // 2
    w[:h, :h, 0, 0] = sign
    w[h:, h:, 1, 1] = sign
    dense.set_weights([w.reshape(-1, 2)])
    return model


def two_blob_images(size=12, pool=1, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (n, size * pool, size * pool, 2)).astype(np.float32)
    q = size * pool // 4
    x[:, q - pool:q + pool, q - pool:q + pool, 0] += 3.0          # blob of type 0 in R_0
    x[:, 3 * q - pool:3 * q + pool, 3 * q - pool:3 * q + pool, 1] += 3.0  # type 1 in R_1
    return x


def test_gradcam_equals_analytic_map():
    model = region_model()
    x = two_blob_images()
    for c in (0, 1):
        cam = grad_cam(model, x, class_index=c, layer_name="feat")
        # alpha_c = |R_c| / (h w) > 0 and alpha_other = 0: the map is A_c / max(A_c).
        expected = x[..., c] / x[..., c].max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(cam, expected, atol=1e-5)


def test_gradcam_peaks_in_the_scored_region_after_upsampling():
    model = region_model(size=12, pool=2)
    x = two_blob_images(size=12, pool=2, n=2)
    cam = grad_cam(model, x, class_index=[0, 1], layer_name="feat")
    assert cam.shape == (2, 24, 24) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    r0, c0 = np.unravel_index(cam[0].argmax(), (24, 24))
    r1, c1 = np.unravel_index(cam[1].argmax(), (24, 24))
    assert r0 < 12 and c0 < 12 and r1 >= 12 and c1 >= 12
    assert cam[0, 12:, 12:].max() < 0.2 and cam[1, :12, :12].max() < 0.2


def test_gradcam_negative_evidence_gives_zero_map():
    cam = grad_cam(region_model(sign=-1.0), two_blob_images(), class_index=0, layer_name="feat")
    assert np.all(cam == 0.0)


def test_gradcam_on_fzlpr_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same")(inp)
    x = keras.layers.Activation("relu", name="relu")(x)
    model = densenet121_fzlpr(num_classes=3, base=keras.Model(inp, x))
    imgs = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    cam = grad_cam(model, imgs, class_index=[0, 2])
    assert cam.shape == (2, 28, 28) and cam.dtype == np.float32
    assert np.all(np.isfinite(cam)) and cam.min() >= 0 and cam.max() <= 1


def test_overlay():
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(grey, heat, alpha=0.4)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(grey, heat, alpha=0.0), np.dstack([grey] * 3))
    # Values by hand: JET maps 1 to dark red (128, 0, 0) and 0 to dark blue (0, 0, 128) in RGB;
    # 0.6 * 100 + 0.4 * 128 = 111.2 -> 111, 0.6 * 100 = 60.
    flat = np.full((4, 4), 100, np.uint8)
    assert overlay(flat, np.ones((4, 4))).reshape(-1, 3).tolist() == [[111, 60, 60]] * 16
    assert overlay(flat, np.zeros((2, 2))).reshape(-1, 3).tolist() == [[60, 60, 111]] * 16
    assert overlay(flat, np.full((4, 4), 7.0))[0, 0].tolist() == [111, 60, 60]   # clipped to 1
    # the 4x4 heatmap is stretched over 16x16: its hot corner stays in the top-left
    assert out[0, 0, 0] > out[0, 0, 2] and out[15, 15, 2] > out[15, 15, 0]
    hot = overlay(np.zeros((2, 2, 1), np.uint8), np.ones((2, 2)), alpha=1.0)
    assert np.all(hot[..., 0] > hot[..., 2])                        # high = red
    with pytest.raises(ValueError):
        overlay(grey.astype(np.float32), heat)


def test_overlay_grid_lays_out_rows_and_writes_nothing_for_no_images(tmp_path):
    import matplotlib.image as mpimg

    from cxr_keras.explain.figures import overlay_grid

    grey = np.zeros((4, 16, 16), np.uint8)
    cams = np.random.default_rng(0).random((4, 16, 16))
    fig = overlay_grid(grey, cams, ["a", "b", "c", "d"], tmp_path / "g.png", cols=3,
                       boxes=[(1, 1, 4, 4)] * 4, cell=(2.0, 2.0), dpi=50)
    assert len(fig.axes) == 6 and len(fig.axes[0].patches) == 1      # 2 x 3 panels, boxes drawn
    h, w = mpimg.imread(tmp_path / "g.png").shape[:2]
    assert (h, w) == (2 * 2 * 50, 3 * 2 * 50)          # 2 rows x 3 columns of 2-inch cells
    assert overlay_grid(grey[:0], cams[:0], [], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
