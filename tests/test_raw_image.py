"""RawImagePreprocessing, the evaluation preprocessing in the graph of an exported model, against
OpenCV's resize, the pipeline's formulas written out in NumPy, and tf.image.resize (also run on
the JAX backend by test_backend_jax)."""

import cv2
import keras
import numpy as np
import pytest

from cxr_keras.layers.raw_image import RawImagePreprocessing, opencv_cubic_resize

from _serialization import round_trip

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def smooth(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.5) if seed % 2 else img  # noise or radiograph-like


def keys_cubic(img, oh, ow, a=-0.75):
    """OpenCV's cubic resize written out in float64: Keys' kernel, half-pixel centres, border
    replicated."""
    def taps(n_in, n_out):
        f = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        t = f - np.floor(f)
        w = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                      ((a + 2) * t - (a + 3)) * t * t + 1,
                      ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1], 1)
        w = np.concatenate([w, 1 - w.sum(1, keepdims=True)], 1)
        return np.clip(np.floor(f)[:, None].astype(int) + np.arange(-1, 3), 0, n_in - 1), w
    (ry, wy), (rx, wx) = taps(img.shape[0], oh), taps(img.shape[1], ow)
    rows = (img.astype(np.float64)[:, rx] * wx).sum(-1)
    return (rows[ry] * wy[:, :, None]).sum(1)


def test_cubic_resize_equals_opencv():
    """Up, down, one axis only, and identity: equal to cv2.resize(INTER_CUBIC) on uint8 except,
    by one grey level, where the exact value is a .5 within float32 rounding."""
    for seed, (h, w, oh, ow) in enumerate([(37, 50, 64, 64), (300, 260, 64, 48), (64, 64, 64, 64),
                                           (50, 20, 50, 33), (33, 90, 17, 90), (5, 7, 40, 41)]):
        img = smooth(h, w, seed)
        expected = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_CUBIC).astype(np.int32)
        exact = keys_cubic(img, oh, ow)
        np.testing.assert_array_equal(np.clip(np.round(exact), 0, 255)[np.abs(exact % 1 - 0.5) > 1e-3],
                                      expected[np.abs(exact % 1 - 0.5) > 1e-3])  # the reference holds
        got = keras.ops.convert_to_numpy(opencv_cubic_resize(
            keras.ops.convert_to_tensor(img[None].astype(np.float32)), (oh, ow)))[0]
        diff = np.abs(got.astype(np.int32) - expected)
        assert diff.max() <= 1, (h, w, oh, ow)
        assert np.all(np.abs(exact[diff > 0] % 1 - 0.5) < 1e-3), (h, w, oh, ow)


def test_crop_channels_and_imagenet_as_written_out():
    pre = RawImagePreprocessing(resize_to=(40, 36), center_crop=(30, 24), channels=3)
    img = smooth(70, 50, 1)
    got = keras.ops.convert_to_numpy(pre(img[None]))[0]
    r = cv2.resize(img, (36, 40), interpolation=cv2.INTER_CUBIC)[5:35, 6:30]
    expected = (np.repeat(r[..., None], 3, -1).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert got.shape == (30, 24, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # uint16 input: round(x / 257) first, as read_image does with a 16-bit PNG
    got16 = keras.ops.convert_to_numpy(pre(img[None].astype(np.uint16) * 257 + 100))[0]
    np.testing.assert_allclose(got16, expected, rtol=0, atol=1e-5)


def test_mtpret_output_size_and_zscore():
    """mtpret: the square cache resized bilinearly (half-pixel centres) to (h, w), Z-score."""
    pre = RawImagePreprocessing(resize_to=32, output_size=(24, 16), channels=1,
                                normalization="mtpret")
    img = smooth(45, 41, 3)
    c = cv2.resize(img, (32, 32), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    expected = np.empty((24, 16))
    for i in range(24):  # bilinear, half-pixel centres, edges clamped: written out
        y = min(max((i + 0.5) * 32 / 24 - 0.5, 0.0), 31.0)
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, 31), y - y0
        for j in range(16):
            x = min(max((j + 0.5) * 2 - 0.5, 0.0), 31.0)
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, 31), x - x0
            top = c[y0, x0] * (1 - fx) + c[y0, x1] * fx
            bottom = c[y1, x0] * (1 - fx) + c[y1, x1] * fx
            expected[i, j] = top * (1 - fy) + bottom * fy
    got = keras.ops.convert_to_numpy(pre(img[None, ..., None]))[0, ..., 0]
    np.testing.assert_allclose(got, (expected - 122.786) / 18.390, rtol=0, atol=1e-4)


def test_config_round_trip_and_bad_arguments():
    layer = RawImagePreprocessing(resize_to=(64, 48), center_crop=40, normalization="unit")
    back = round_trip(layer)
    img = smooth(50, 60, 5)[None]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back(img)),
                                  keras.ops.convert_to_numpy(layer(img)))
    assert layer.compute_output_shape((None, None, None)) == (None, 40, 40, 3)
    with pytest.raises(ValueError, match="center_crop"):
        RawImagePreprocessing(resize_to=32, center_crop=40)
    with pytest.raises(ValueError, match="normalization"):
        RawImagePreprocessing(resize_to=32, normalization="zscore")
    with pytest.raises(ValueError, match="resize_to"):
        RawImagePreprocessing(resize_to=(0, 3))
