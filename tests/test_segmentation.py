"""Segmentation losses, metrics, AND ensemble and lung crop (SPEC section 2, multiloss)."""

import warnings

import cv2
import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from cxr_keras.data.lung_crop import and_ensemble, contrast_stretch, lung_bbox, lung_crop
from cxr_keras.data.phantom import render_chest
from cxr_keras.evaluation.segmentation import compare_segmentations, segmentation_metrics, summarise, wilcoxon_paired
from cxr_keras.losses.segmentation import (
    SEGMENTATION_LOSSES,
    BCEDiceLoss,
    DiceLoss,
    FocalTverskyLoss,
    TverskyLoss,
    get_segmentation_loss,
)

from _models import on_tensorflow, value_and_grad  # tests/ is on sys.path
from _serialization import round_trip

EPS = 1e-7


# ----------------------------------------------------------------- NumPy references (float64)

def ref_bce(y, p):
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))                 # eq. 1


def ref_focal(y, p, gamma=1.0, alpha=0.25):
    pc = np.clip(p, EPS, 1 - EPS)
    p_t = np.where(y == 1, p, 1 - p)                                   # eq. 3
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * np.log(np.where(y == 1, pc, 1 - pc))   # eq. 7


def _sums(a, per_image):
    return a.reshape(a.shape[0], -1).sum(1) if per_image else a.sum()


def ref_dice(y, p, smooth=1.0, per_image=False):
    inter, sy, sp = (_sums(a, per_image) for a in (y * p, y, p))
    return 1 - (2 * inter + smooth) / (sy + sp + smooth)              # eq. 5


def ref_ti(y, p, a_fn=0.7, b_fp=0.3, smooth=1.0, per_image=False):
    tp = _sums(y * p, per_image)
    fn = _sums(y * (1 - p), per_image)
    fp = _sums((1 - y) * p, per_image)
    return (tp + smooth) / (tp + a_fn * fn + b_fp * fp + smooth)      # eq. 8


def ref_focal_tversky(y, p, gamma=4 / 3, per_image=False, **kw):
    lung = (1 - ref_ti(y, p, per_image=per_image, **kw)) ** (1 / gamma)
    background = (1 - ref_ti(1 - y, 1 - p, per_image=per_image, **kw)) ** (1 / gamma)
    return lung + background                                           # eq. 9


def _data(seed=0, b=3, h=8, w=8):
    rng = np.random.default_rng(seed)
    y = (rng.random((b, h, w, 1)) < 0.4).astype(np.float32)
    p = rng.uniform(0.02, 0.98, (b, h, w, 1)).astype(np.float32)
    return y, p


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# ----------------------------------------------------------------- losses against NumPy

def test_bce_and_focal_builtins_match_eqs_1_and_7():
    y, p = _data(0)
    yd, pd = _f64(y, p)
    bce = SEGMENTATION_LOSSES["bce"]()
    focal = SEGMENTATION_LOSSES["focal"]()
    assert isinstance(bce, keras.losses.BinaryCrossentropy)
    assert focal.gamma == 1.0 and focal.alpha == 0.25 and focal.apply_class_balancing
    np.testing.assert_allclose(float(bce(y, p)), ref_bce(yd, pd).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(focal(y, p)), ref_focal(yd, pd).mean(), rtol=1e-5)
    focal2 = get_segmentation_loss("focal", alpha=0.5, gamma=2.0)
    np.testing.assert_allclose(float(focal2(y, p)), ref_focal(yd, pd, 2.0, 0.5).mean(), rtol=1e-5)


def test_dice_loss_from_logits_applies_the_sigmoid():
    y, p = _data(1)
    logits = np.log(p / (1 - p)).astype("float32")
    np.testing.assert_allclose(float(DiceLoss(from_logits=True)(y, logits)),
                               ref_dice(*_f64(y, p), per_image=False), rtol=1e-5)
    assert DiceLoss.from_config(DiceLoss(from_logits=True).get_config()).from_logits


@pytest.mark.parametrize("per_image", [False, True])
def test_dice_and_bce_dice_eqs_5_6(per_image):
    y, p = _data(1)
    yd, pd = _f64(y, p)
    dice = ref_dice(yd, pd, per_image=per_image)
    loss = DiceLoss(per_image=per_image, reduction=None)(y, p)
    assert tuple(loss.shape) == (3,)
    np.testing.assert_allclose(np.asarray(loss), np.broadcast_to(dice, (3,)), rtol=1e-5)
    bce_img = ref_bce(yd, pd).reshape(3, -1).mean(1)
    np.testing.assert_allclose(float(BCEDiceLoss(per_image=per_image)(y, p)),
                               np.mean(0.5 * bce_img + 0.5 * dice), rtol=1e-5)
    np.testing.assert_allclose(float(SEGMENTATION_LOSSES["bce_dice"](bce_weight=0.2,
                                                                     dice_weight=0.8)(y, p)),
                               np.mean(0.2 * bce_img + 0.8 * ref_dice(yd, pd)), rtol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_and_focal_tversky_eqs_8_9(per_image):
    y, p = _data(2)
    yd, pd = _f64(y, p)
    tv = TverskyLoss(per_image=per_image, reduction=None)(y, p)
    ti = ref_ti(yd, pd, per_image=per_image)
    np.testing.assert_allclose(np.asarray(tv), np.broadcast_to(1 - ti, (3,)), rtol=1e-5)
    ft = FocalTverskyLoss(per_image=per_image)(y, p)
    np.testing.assert_allclose(float(ft), np.mean(ref_focal_tversky(yd, pd, per_image=per_image)),
                               rtol=1e-5)
    # both classes really enter: lung-only differs and equals the first term alone
    lung = FocalTverskyLoss(per_image=per_image, include_background=False)(y, p)
    np.testing.assert_allclose(float(lung),
                               np.mean((1 - ti) ** 0.75), rtol=1e-5)
    assert float(ft) > float(lung) + 1e-3
    # configurable weights, smoothing and gamma
    kw = dict(alpha=0.4, beta=0.6, smooth=1e-6)
    np.testing.assert_allclose(
        float(FocalTverskyLoss(gamma=2.0, **kw)(y, p)),
        ref_focal_tversky(yd, pd, gamma=2.0, a_fn=0.4, b_fp=0.6, smooth=1e-6), rtol=1e-5)


def test_tversky_weights_false_negatives_more():
    big = np.zeros((1, 16, 16, 1), np.float32)
    big[0, 4:12, 4:12] = 1                                  # 64 pixels
    small = big.copy()
    small[0, 4:6, 4:12] = 0                                 # 48 pixels
    # same TP = 48; 16 false negatives (target big, prediction small) vs 16 false positives
    cases = {"fn": (big, small), "fp": (small, big)}
    for loss in (TverskyLoss(), FocalTverskyLoss(), FocalTverskyLoss(include_background=False)):
        assert float(loss(*cases["fn"])) > float(loss(*cases["fp"])) + 0.01
    np.testing.assert_allclose(float(TverskyLoss()(*cases["fn"])), 1 - 49 / (49 + 0.7 * 16),
                               rtol=1e-6)
    swapped = TverskyLoss(alpha=0.3, beta=0.7)
    assert float(swapped(*cases["fn"])) < float(swapped(*cases["fp"])) - 0.01
    even = TverskyLoss(alpha=0.5, beta=0.5)
    np.testing.assert_allclose(float(even(*cases["fn"])), float(even(*cases["fp"])), rtol=1e-6)


def test_keras_builtin_overlap_conventions():
    """What the module docstring says about keras' Dice / Tversky (no smoothing; alpha on FN)."""
    y, p = _data(3)
    np.testing.assert_allclose(float(keras.losses.Tversky(alpha=0.7, beta=0.3)(y, p)),
                               float(TverskyLoss(smooth=0.0)(y, p)), rtol=1e-5)
    np.testing.assert_allclose(float(keras.losses.Dice()(y, p)), float(DiceLoss(smooth=0.0)(y, p)),
                               rtol=1e-5)


def _instances():
    return ([factory() for factory in SEGMENTATION_LOSSES.values()]
            + [BCEDiceLoss(bce_weight=0.3, dice_weight=0.7, smooth=2.0, per_image=True),
               TverskyLoss(alpha=0.6, beta=0.4, include_background=True),
               FocalTverskyLoss(gamma=1.5, smooth=1e-6, per_image=True), DiceLoss(smooth=0.5)])


def test_serialization_roundtrip():
    y, p = _data(4)
    for loss in _instances():
        restored = round_trip(loss)
        np.testing.assert_allclose(float(restored(y, p)), float(loss(y, p)), rtol=1e-6)


def test_finite_gradients_at_saturated_probabilities():
    y, _ = _data(5)
    cases = {"perfect": y, "worst": 1 - y, "half": np.where(np.arange(y.size).reshape(y.shape) % 2,
                                                           y, 1 - y)}
    for loss in _instances():
        for case, p0 in cases.items():
            value, grad = value_and_grad(lambda v, loss=loss: loss(y, v), p0)
            assert np.isfinite(float(value)), (loss.name, case)
            assert np.all(np.isfinite(grad)), (loss.name, case)
        assert float(loss(y, y)) < 1e-4, loss.name                   # perfect prediction ~ 0


@pytest.mark.skipif(not on_tensorflow(), reason="tf.function: TensorFlow only")
def test_graph_mode_dynamic_batch():
    import tensorflow as tf

    y, p = _data(6, b=4)
    spec = tf.TensorSpec([None, 8, 8, 1], tf.float32)
    for loss in _instances():
        fn = tf.function(lambda a, b, loss=loss: loss(a, b), input_signature=[spec, spec])
        np.testing.assert_allclose(float(fn(y, p)), float(loss(y, p)), rtol=1e-6)


# ----------------------------------------------------------------- metrics against sklearn

def test_metrics_match_sklearn():
    rng = np.random.default_rng(7)
    y = np.zeros((5, 32, 32, 1), np.uint8)
    y[:, 6:26, 4:14] = 1
    y[:, 6:26, 18:28] = 1
    prob = np.clip(y + rng.normal(0, 0.45, y.shape), 0, 1).astype(np.float32)
    res = segmentation_metrics(y, prob)
    for i in range(5):
        t, pr = y[i].ravel(), (prob[i] > 0.5).ravel().astype(np.uint8)
        assert res["per_image"]["accuracy"][i] == pytest.approx(accuracy_score(t, pr))
        assert res["per_image"]["dice"][i] == pytest.approx(f1_score(t, pr))
        assert res["per_image"]["iou"][i] == pytest.approx(jaccard_score(t, pr))
        assert res["per_image"]["iou_background"][i] == pytest.approx(
            jaccard_score(t, pr, pos_label=0))
        assert res["per_image"]["mean_iou"][i] == pytest.approx(
            jaccard_score(t, pr, average="macro"))
    for name in ("accuracy", "dice", "iou", "iou_background", "mean_iou"):
        v = res["per_image"][name]
        assert res[name]["mean"] == pytest.approx(v.mean())
        assert res[name]["std"] == pytest.approx(v.std(ddof=1))
        assert res[name]["n"] == 5
    assert 0 < res["iou"]["mean"] < res["dice"]["mean"] < 1
    # the same with (N, H, W) inputs and a single (H, W) image
    res2 = segmentation_metrics(y[..., 0], prob[..., 0])
    np.testing.assert_allclose(res2["per_image"]["dice"], res["per_image"]["dice"])
    assert segmentation_metrics(y[0, ..., 0], prob[0, ..., 0])["dice"]["n"] == 1


def test_metrics_empty_masks():
    z = np.zeros((2, 8, 8))
    res = segmentation_metrics(z, z)
    for name in ("accuracy", "dice", "iou", "iou_background", "mean_iou"):
        np.testing.assert_array_equal(res["per_image"][name], 1.0)
    one = np.zeros((1, 8, 8))
    one[0, 0, 0] = 1
    res = segmentation_metrics(z[:1], one)                  # one FP on an empty target
    assert res["per_image"]["dice"][0] == 0 and res["per_image"]["iou"][0] == 0
    assert res["per_image"]["accuracy"][0] == pytest.approx(63 / 64)
    assert np.isnan(summarise({"x": [0.5]})["x"]["std"])


def test_wilcoxon_paired():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(8)
    a = rng.uniform(0.9, 1.0, 30)
    b = a - rng.normal(0.01, 0.01, 30)
    out = wilcoxon_paired(a, b)
    assert out["pvalue"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert out["n"] == 30 and out["median_diff"] > 0
    assert wilcoxon_paired(a, a)["pvalue"] == 1.0
    ra = {"per_image": {"dice": a, "iou": a}}
    rb = {"per_image": {"dice": b, "iou": a}}
    cmp = compare_segmentations(ra, rb, metrics=("dice", "iou"))
    assert cmp["dice"]["pvalue"] < 0.05 and cmp["iou"]["pvalue"] == 1.0


# ----------------------------------------------------------------- ensemble and crop on phantoms

def _phantom(seed=3, size=128):
    ph = render_chest(seed, size=size, findings=[])
    return ph.image, ((ph.lung_left | ph.lung_right) > 0).astype(np.uint8)


def test_and_ensemble_on_phantom():
    _, m = _phantom()
    assert m.sum() > 500
    dilated = cv2.dilate(m, np.ones((7, 7), np.uint8))
    np.testing.assert_array_equal(and_ensemble([m, dilated]), m)
    prob = [m * 0.9 + 0.05, dilated * 0.8, np.ones_like(m, np.float32) * 0.51]
    out = and_ensemble(prob)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out, m)
    assert and_ensemble([m, dilated, m * 0.5]).sum() == 0               # 0.5 is not > 0.5
    # batches with a trailing channel, and an array with the models first
    batch = np.stack([m, m])[..., None]
    np.testing.assert_array_equal(and_ensemble(np.stack([batch, batch])), batch)
    with pytest.raises(ValueError):
        and_ensemble([m, m[:-1]])


def test_lung_bbox_on_phantom():
    _, m = _phantom(4)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = lung_bbox(m)
    assert (y0, y1, x0, x1) == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    assert lung_bbox(m[..., None]) == (y0, y1, x0, x1)
    Y0, Y1, X0, X1 = lung_bbox(m, margin=0.05)
    assert Y0 == max(0, y0 - round(0.05 * (y1 - y0)))
    assert X1 == min(128, x1 + round(0.05 * (x1 - x0)))
    assert lung_bbox(m, margin=2.0) == (0, 128, 0, 128)                 # clipped to the image
    with pytest.warns(RuntimeWarning):
        assert lung_bbox(np.zeros((10, 12))) == (0, 10, 0, 12)
    assert lung_bbox(np.zeros((10, 12)), return_found=True) == ((0, 10, 0, 12), False)


def test_contrast_stretch_against_percentiles():
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (64, 80)).astype(np.uint8)
    lo, hi = np.percentile(img.astype(np.float32), [1, 99])
    out = contrast_stretch(img)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out, np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert np.mean(out == 0) >= 0.009 and np.mean(out == 1) >= 0.009
    np.testing.assert_array_equal(contrast_stretch(np.full((5, 5), 7)), 0)
    np.testing.assert_allclose(contrast_stretch(np.repeat(img[..., None], 3, -1)), out, atol=1e-6)


def test_lung_crop_on_phantom():
    image, m = _phantom(5)
    out = lung_crop(image, m)
    assert out.shape == (512, 512) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    # at the crop's own size the bicubic resize is the identity: crop + stretch exactly
    y0, y1, x0, x1 = lung_bbox(m)
    same = lung_crop(image, m, size=(y1 - y0, x1 - x0))
    np.testing.assert_allclose(same, contrast_stretch(image[y0:y1, x0:x1]), atol=1e-6)
    # a half-resolution mask: its box scaled to the image covers every lung pixel of the mask
    small = cv2.resize(m, (64, 64), interpolation=cv2.INTER_AREA)
    out_s, info = lung_crop(image, small, size=96, return_info=True)
    assert out_s.shape == (96, 96) and info["found"]
    Y0, Y1, X0, X1 = info["bbox_image"]
    b0, b1, c0, c1 = info["bbox_mask"]
    assert (Y0, Y1, X0, X1) == (2 * b0, 2 * b1, 2 * c0, 2 * c1)
    up = cv2.resize(small, (128, 128), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(up)
    assert Y0 <= ys.min() and ys.max() < Y1 and X0 <= xs.min() and xs.max() < X1
    # channel layouts and the empty-mask fallback
    np.testing.assert_allclose(lung_crop(np.dstack([image] * 3), m), out, atol=1e-5)
    np.testing.assert_allclose(lung_crop(image[..., None], m[..., None]), out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = lung_crop(image, np.zeros_like(m), size=128)
    _, info = lung_crop(image, np.zeros_like(m), size=128, return_info=True)
    assert not info["found"] and info["bbox_image"] == (0, 128, 0, 128)
    np.testing.assert_allclose(whole, contrast_stretch(image), atol=1e-6)


def test_write_lung_crops_writes_resumes_and_counts_empty_masks(tmp_path):
    """Each image's crop is the box of its mask (here the left half, exactly), contrast-stretched
    and resized; files already there are kept; empty masks are counted and keep the whole image."""
    from cxr_keras.data.images import read_image, write_image
    from cxr_keras.data.lung_crop import write_lung_crops

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    left = np.zeros((32, 32), np.uint8)
    left[:, :16] = 1
    crops, empty = write_lung_crops([tmp_path / "a.png", tmp_path / "a.png"], [left, np.zeros_like(left)],
                                    tmp_path / "out", size=(32, 16), low=0.0, high=100.0, progress=False)
    assert [p.rsplit("/", 1)[-1] for p in crops] == ["00000_a.png", "00001_a.png"] and empty == 1
    half = image[:, :16].astype(np.float64)  # same size: the resize is the identity
    want = np.round((half - half.min()) / (half.max() - half.min()) * 255)
    np.testing.assert_allclose(read_image(crops[0]), want, atol=1)
    assert read_image(crops[1]).shape == (32, 16)  # the whole image, squeezed to the size
    (tmp_path / "out" / "00000_a.png").write_bytes(b"kept")
    write_lung_crops([tmp_path / "a.png"], [left], tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "00000_a.png").read_bytes() == b"kept"
