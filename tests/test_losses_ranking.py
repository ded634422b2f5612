"""ZLPR / FZLPR / masked BCE and focal losses against independent NumPy formulas."""

import keras
import numpy as np
import pytest

from cxr_keras.losses import FZLPR, ZLPR, MaskedBinaryLoss, get_loss

from _models import value_and_grad  # tests/ is on sys.path under pytest
from _serialization import round_trip


def ref_fzlpr_rows(y, s, tau):
    """Paper eq. (5), written naively in float64 (moderate |s|/tau only)."""
    y = np.asarray(y, np.float64)
    s = np.asarray(s, np.float64)
    out = []
    for yr, sr in zip(y, s):
        pos = sr[yr == 1]
        neg = sr[yr == 0]                      # NaN == 0 is False: NaN entries dropped
        out.append(np.log(1 + np.sum(np.exp(-pos / tau))) + np.log(1 + np.sum(np.exp(neg / tau))))
    return np.array(out)


def ref_bce(y, s):
    return np.logaddexp(0, -s) * y + np.logaddexp(0, s) * (1 - y)


def ref_focal(y, s, gamma=2.0, alpha=0.25):
    p = 1 / (1 + np.exp(-s))
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return alpha_t * (1 - p_t) ** gamma * ref_bce(y, s)


def _data(seed=0, n=16, c=14):
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 2, (n, c)).astype(np.float32)
    y = (rng.random((n, c)) < 0.2).astype(np.float32)
    y[0] = 0          # "No Finding": empty positive set
    y[1] = 1          # no negative label
    return y, s


@pytest.mark.parametrize("tau", [0.1, 0.2, 0.5, 1.0])
def test_fzlpr_matches_numpy_formula(tau):
    y, s = _data()
    per_row = FZLPR(tau=tau, reduction=None)(y, s)
    np.testing.assert_allclose(np.asarray(per_row), ref_fzlpr_rows(y, s, tau), rtol=2e-5, atol=1e-5)
    mean = float(FZLPR(tau=tau)(y, s))
    np.testing.assert_allclose(mean, ref_fzlpr_rows(y, s, tau).mean(), rtol=2e-5)


def test_tau_one_is_zlpr_and_tau_matters():
    y, s = _data(1)
    z = float(ZLPR()(y, s))
    assert z == pytest.approx(float(FZLPR(tau=1.0)(y, s)), rel=1e-7)
    np.testing.assert_allclose(z, ref_fzlpr_rows(y, s, 1.0).mean(), rtol=2e-5)
    assert abs(float(FZLPR(tau=0.2)(y, s)) - z) > 0.1


def test_empty_positive_and_negative_sets():
    s = np.array([[0.5, -1.0, 2.0]], np.float32)
    no_pos = float(FZLPR(tau=0.5)(np.zeros((1, 3), np.float32), s))
    assert no_pos == pytest.approx(np.log(1 + np.exp(s[0] / 0.5).sum()), rel=1e-6)
    no_neg = float(FZLPR(tau=0.5)(np.ones((1, 3), np.float32), s))
    assert no_neg == pytest.approx(np.log(1 + np.exp(-s[0] / 0.5).sum()), rel=1e-6)
    all_nan = float(FZLPR(tau=0.5)(np.full((1, 3), np.nan, np.float32), s))
    assert all_nan == 0.0


def _loss_and_grad(loss, y, s):
    value, grad = value_and_grad(lambda v: loss(y, v), s)
    return float(value), grad


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_stable_for_huge_scores(tau):
    big = 1e4 * tau                                   # |s| / tau = 1e4
    y = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    # Row 0: all wrong (loss ~ 2e4 per wrong term); row 1: all right (loss ~ 0); row 2: no positive.
    s = np.array([[-big, big, -big / 2, -big], [big, -big, -big, -big], [big, -big, 0, 0]],
                 np.float32)
    value, grad = _loss_and_grad(FZLPR(tau=tau, reduction="sum"), y, s)
    rows = np.asarray(FZLPR(tau=tau, reduction=None)(y, s))
    assert np.all(np.isfinite(rows)) and np.all(np.isfinite(grad)) and np.isfinite(value)
    # log(1 + e^a + e^b) ~ max(a, b) for huge arguments.
    np.testing.assert_allclose(rows, [1e4 + 1e4, 0.0, 1e4], rtol=1e-6, atol=1e-3)
    # Row 0: softmax weight 1 on the dominant positive (-big) and negative (+big) entries.
    np.testing.assert_allclose(grad[0], [-1 / tau, 1 / tau, 0, 0], atol=1e-6)
    np.testing.assert_allclose(grad[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(grad[2], [1 / tau, 0, 0, 0], atol=1e-6)


def test_nan_targets_are_ignored():
    y, s = _data(2, n=6, c=5)
    y_nan = y.copy()
    y_nan[0, 1] = np.nan
    y_nan[3, :2] = np.nan
    loss = FZLPR(tau=0.2, reduction=None)
    np.testing.assert_allclose(np.asarray(loss(y_nan, s)), ref_fzlpr_rows(y_nan, s, 0.2),
                               rtol=2e-5, atol=1e-6)
    # Differs from treating NaN as negative, and the masked logits get exactly zero gradient.
    assert not np.allclose(np.asarray(loss(np.nan_to_num(y_nan), s)), np.asarray(loss(y_nan, s)))
    _, grad = _loss_and_grad(FZLPR(tau=0.2), y_nan, s)
    assert np.all(np.isfinite(grad))
    assert grad[0, 1] == 0.0 and np.all(grad[3, :2] == 0.0)
    assert np.all(grad[3, 2:] != 0.0)


def test_serialization_round_trip():
    for loss in (FZLPR(tau=0.3), ZLPR(), MaskedBinaryLoss("focal", gamma=1.5, alpha=0.4,
                                                             apply_class_balancing=True)):
        round_trip(loss)
    assert FZLPR(tau=0.3).get_config()["tau"] == 0.3
    assert "tau" not in ZLPR().get_config()
    assert ZLPR.from_config(ZLPR().get_config()).tau == 1.0
    y, s = _data(3)
    back = round_trip(FZLPR(0.3))
    assert float(back(y, s)) == pytest.approx(float(FZLPR(0.3)(y, s)))


def test_get_loss_factory():
    assert isinstance(get_loss("zlpr"), ZLPR)
    f = get_loss("fzlpr")
    assert type(f) is FZLPR and f.tau == 0.2
    assert get_loss("FZLPR", tau=0.4).tau == 0.4
    focal = get_loss("focal")
    assert (focal.kind, focal.gamma, focal.alpha, focal.apply_class_balancing, focal.from_logits) \
        == ("focal", 2.0, 0.25, True, True)
    assert get_loss("bce").kind == "bce"
    with pytest.raises(ValueError):
        get_loss("hinge")
    with pytest.raises(ValueError):
        FZLPR(tau=0.0)


def test_masked_binary_equals_keras_without_nan():
    y, s = _data(4)
    ours_bce = float(get_loss("bce")(y, s))
    keras_bce = float(keras.losses.BinaryCrossentropy(from_logits=True)(y, s))
    assert ours_bce == pytest.approx(keras_bce, rel=1e-6)
    assert ours_bce == pytest.approx(ref_bce(y.astype(float), s.astype(float)).mean(), rel=1e-5)
    ours_focal = float(get_loss("focal")(y, s))
    keras_focal = float(keras.losses.BinaryFocalCrossentropy(
        from_logits=True, gamma=2.0, alpha=0.25, apply_class_balancing=True)(y, s))
    assert ours_focal == pytest.approx(keras_focal, rel=1e-5)
    assert ours_focal == pytest.approx(ref_focal(y.astype(float), s.astype(float)).mean(),
                                       rel=1e-4)


def test_masked_binary_with_nan_is_mean_over_valid_entries():
    y, s = _data(5, n=8, c=6)
    y[2, 3] = y[5, 0] = y[5, 1] = np.nan
    valid = ~np.isnan(y)
    yf, sf = np.nan_to_num(y).astype(float), s.astype(float)
    assert float(get_loss("bce")(y, s)) == pytest.approx(ref_bce(yf, sf)[valid].mean(), rel=1e-5)
    assert float(get_loss("focal")(y, s)) == pytest.approx(ref_focal(yf, sf)[valid].mean(),
                                                            rel=1e-4)
    _, grad = _loss_and_grad(get_loss("bce"), y, s)
    assert np.all(np.isfinite(grad)) and grad[2, 3] == 0.0 and grad[5, 0] == 0.0


def test_fit_with_nan_targets_stays_finite():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = (rng.random((32, 3)) < 0.3).astype(np.float32)
    y[::4, 0] = np.nan
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=FZLPR(tau=0.2))
    hist = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert hist.history["loss"][-1] < hist.history["loss"][0]
