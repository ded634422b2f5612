"""The 12 `multiloss` classification losses against independent NumPy formulas (paper eqs. 13-28)."""

import keras
import numpy as np
import pytest

from cxr_keras.losses.calibrated import (
    CLASSIFICATION_LOSS_NAMES,
    CLASSIFICATION_LOSSES,
    CalibratedLoss,
    EntropyRegularizer,
    LabelSmoothedLoss,
    LossSpec,
    NegativeEntropyCrossentropy,
    calibration_difference,
    entropy,
    get_classification_loss,
)

from _models import value_and_grad  # tests/ is on sys.path under pytest
from _serialization import round_trip

EPS = 1e-7
K = 3


# ---------------------------------------------------------------- NumPy references (float64)

def np_ce(y, p):
    q = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return -(y * np.log(q)).sum(-1)


def np_focal(y, p, gamma):
    q = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return (-(y * (1 - q) ** gamma * np.log(q))).sum(-1)


def np_kld(y, p):
    yc, pc = np.clip(y, EPS, 1), np.clip(p, EPS, 1)
    return (yc * np.log(yc / pc)).sum(-1)


def np_hinge(y, p):
    pos = (y * p).sum(-1)
    neg = ((1 - y) * p).max(-1)
    return np.maximum(neg - pos + 1, 0)


def np_smooth(y, s, d=None):
    return (1 - s) * y + s / (y.shape[-1] if d is None else d)


def np_entropy(p):
    return -(p * np.log(np.clip(p, EPS, 1))).sum(-1)


def np_difference(y, p):
    acc = np.mean(p.argmax(-1) == y.argmax(-1))
    conf = np.mean(p.max(-1))
    return abs(acc - conf)


def np_per_sample(name, y, p):
    """Per-sample loss of each registry entry with the paper's hyper-parameters."""
    d = np_difference(y, p)
    return {
        "cce": lambda: np_ce(y, p),
        "focal": lambda: np_focal(y, p, 1.0),
        "kld": lambda: np_kld(y, p),
        "hinge": lambda: np_hinge(y, p),
        "ls_cce": lambda: np_ce(np_smooth(y, 0.2), p),
        "ls_focal": lambda: np_focal(np_smooth(y, 0.2), p, 1.0),
        "cal_cce": lambda: np_ce(y, p) + 10 * d,
        "cce_entropy": lambda: np_ce(y, p) - 2.0 * np_entropy(p),
        "cal_neg_entropy": lambda: np_ce(y, p) - 0.001 * np_entropy(p) + 10 * d,
        "cal_kld": lambda: np_kld(y, p) + 1 * d,
        "cal_focal": lambda: np_focal(y, p, 1.0) + 1 * d,
        "cal_hinge": lambda: np_hinge(y, p) + 10 * d,
    }[name]()


def _data(seed=0, n=16, k=K, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (n, k))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    return y, p


# ---------------------------------------------------------------- registry

def test_registry_has_the_12_losses_in_paper_order():
    assert CLASSIFICATION_LOSS_NAMES == (
        "cce", "focal", "kld", "hinge", "ls_cce", "ls_focal", "cal_cce", "cce_entropy",
        "cal_neg_entropy", "cal_kld", "cal_focal", "cal_hinge")
    for name, spec in CLASSIFICATION_LOSSES.items():
        assert isinstance(spec, LossSpec) and spec.name == name and spec.title
        assert spec.output_regularizer is None  # cce_entropy's penalty is in its loss
    assert CLASSIFICATION_LOSSES["cal_cce"].title == "Calibrated CCE"


def test_unknown_name_and_option():
    with pytest.raises(ValueError, match="known:.*cal_hinge"):
        get_classification_loss("nope")
    with pytest.raises(TypeError, match="valid"):
        get_classification_loss("cal_cce", gamma=2.0)
    assert get_classification_loss("CAL_CCE").name == "cal_cce"


def test_original_code_presets_and_overrides():
    plain = get_classification_loss("cce_entropy", original_code=True).make_loss()
    assert type(plain) is keras.losses.CategoricalCrossentropy      # trained without the penalty
    assert type(get_classification_loss("cce_entropy", entropy_regularizer=False).make_loss()) \
        is keras.losses.CategoricalCrossentropy
    o = get_classification_loss("ls_focal", original_code=True).options
    assert o["smoothing_denominator"] == 2.0 and o["gamma"] == 2.0
    assert get_classification_loss("cal_kld", original_code=True).options["gradient"] is False
    assert get_classification_loss("cal_hinge", original_code=True, gradient=True).options[
        "gradient"] is True
    assert get_classification_loss("cce_entropy", beta=0.5).make_loss().beta == 0.5


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("name", CLASSIFICATION_LOSS_NAMES)
def test_each_loss_matches_numpy(name):
    y, p = _data(seed=CLASSIFICATION_LOSS_NAMES.index(name))
    ref = np_per_sample(name, y.astype(np.float64), p.astype(np.float64))
    loss = get_classification_loss(name).make_loss()
    # default reduction, sample_weight=None: mean(base) + lam * difference
    np.testing.assert_allclose(float(loss(y, p)), ref.mean(), rtol=1e-5, atol=1e-6)
    per_sample = keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(y),
                                                      keras.ops.convert_to_tensor(p)))
    np.testing.assert_allclose(per_sample, ref, rtol=1e-5, atol=1e-6)


def test_difference_value_and_its_gradient():
    y, p = _data(3)
    d = float(calibration_difference(y, p))
    np.testing.assert_allclose(d, np_difference(y.astype(np.float64), p.astype(np.float64)),
                               rtol=1e-6)
    assert float(calibration_difference(y, p, gradient=False)) == pytest.approx(d)

    _, grad_on = value_and_grad(lambda v: calibration_difference(y, v), p)
    _, grad_off = value_and_grad(lambda v: calibration_difference(y, v, gradient=False), p)
    # d|acc - conf| / d p[i, argmax_i] = -sign(acc - conf) / B; zero elsewhere.
    acc = np.mean(p.argmax(-1) == y.argmax(-1))
    expected = np.zeros_like(p)
    expected[np.arange(len(p)), p.argmax(-1)] = -np.sign(acc - p.max(-1).mean()) / len(p)
    np.testing.assert_allclose(grad_on, expected, atol=1e-7)
    assert np.abs(grad_on).sum() > 0
    assert np.all(np.asarray(grad_off) == 0)


@pytest.mark.parametrize("name", ["cal_cce", "cal_neg_entropy", "cal_kld", "cal_focal",
                                  "cal_hinge"])
def test_gradient_flag_changes_only_the_gradient(name):
    y, p = _data(4)
    lam = get_classification_loss(name).options["lam"]
    on = get_classification_loss(name).make_loss()
    off = get_classification_loss(name, gradient=False).make_loss()
    v_on, g_on = value_and_grad(lambda v: on(y, v), p)
    v_off, g_off = value_and_grad(lambda v: off(y, v), p)
    _, g_d = value_and_grad(lambda v: calibration_difference(y, v), p)
    assert float(v_on) == pytest.approx(float(v_off), rel=1e-6)
    diff_grad = g_on - g_off
    np.testing.assert_allclose(diff_grad, lam * g_d, atol=1e-6)
    assert np.abs(diff_grad).sum() > 0


def test_eq21_literal_one_over_k_option():
    y, p = _data(5)
    yd, pd = y.astype(np.float64), p.astype(np.float64)
    lit = get_classification_loss("cal_cce", divide_by_classes=True).make_loss()
    np.testing.assert_allclose(float(lit(y, p)), np_ce(yd, pd).mean() / K
                               + 10 * np_difference(yd, pd), rtol=1e-5)


def test_original_code_label_smoothed_focal_divides_by_two():
    y, p = _data(6)
    loss = get_classification_loss("ls_focal", original_code=True).make_loss()
    assert isinstance(loss, LabelSmoothedLoss)
    ref = np_focal(np_smooth(y.astype(np.float64), 0.2, d=2), p.astype(np.float64), 2.0)
    np.testing.assert_allclose(float(loss(y, p)), ref.mean(), rtol=1e-5)
    # denominator=None is keras' own label smoothing (/K)
    same = LabelSmoothedLoss(keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=1.0), 0.2)
    np.testing.assert_allclose(float(same(y, p)),
                               float(get_classification_loss("ls_focal").make_loss()(y, p)),
                               rtol=1e-6)


def test_sample_weight_scales_the_difference_by_mean_weight():
    y, p = _data(7)
    w = np.linspace(0.5, 1.5, len(y)).astype(np.float32) ** 2
    yd, pd = y.astype(np.float64), p.astype(np.float64)
    ref = np.mean(w * np_ce(yd, pd)) + 10 * np_difference(yd, pd) * w.mean()
    got = float(get_classification_loss("cal_cce").make_loss()(y, p, sample_weight=w))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("batch", [3, 16])
def test_cce_entropy_training_loss_against_numpy(batch):
    """Eq. 24 with beta 2: the loss a model trains on is mean_batch(CE - 2 H(p)) at any batch size,
    on every Keras version (whether or not it divides activity losses by the batch size)."""
    loss, reg = get_classification_loss("cce_entropy").build()
    model = _tiny_model(reg)
    model.compile(optimizer="sgd", loss=loss)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 8)).astype(np.float32)
    y = np.eye(K, dtype=np.float32)[rng.integers(0, K, batch)]
    p = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
    expected = np.mean(np_ce(y, p) - 2.0 * np_entropy(p))
    np.testing.assert_allclose(model.test_on_batch(x, y), expected, rtol=1e-5)


@pytest.mark.parametrize("batch", [3, 16])
def test_entropy_and_regularizer_against_numpy(batch):
    """The penalty EntropyRegularizer adds is -beta * mean_batch(H(p)) at any batch size, whether
    or not this Keras divides activity losses by the batch size (3.14+ does, 3.10-3.13 do not)."""
    y, p = _data(8)
    pd = p.astype(np.float64)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(entropy(p)), np_entropy(pd), rtol=1e-5)
    reg = EntropyRegularizer(beta=2.0)
    inp = keras.Input((5,))
    layer = keras.layers.Dense(K, activation="softmax", activity_regularizer=reg)
    model = keras.Model(inp, layer(inp))
    x = np.random.default_rng(0).normal(size=(batch, 5)).astype(np.float32)
    out = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), -2.0 * np_entropy(out).mean(), rtol=1e-5)
    # negative-entropy CE (no DCA term)
    np.testing.assert_allclose(float(NegativeEntropyCrossentropy(beta=0.3)(y, p)),
                               np.mean(np_ce(y, pd) - 0.3 * np_entropy(pd)), rtol=1e-5)


# ---------------------------------------------------------------- serialization and training

@pytest.mark.parametrize("original_code", [False, True])
def test_serialization_round_trip(original_code):
    y, p = _data(9)
    for name in CLASSIFICATION_LOSS_NAMES:
        loss, reg = get_classification_loss(name, original_code=original_code).build()
        back = round_trip(loss)
        assert back.name == name
        assert float(back(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)
        if reg is not None:
            reg2 = round_trip(reg)
            assert isinstance(reg2, EntropyRegularizer) and reg2.beta == reg.beta
    lit = CalibratedLoss(keras.losses.CategoricalCrossentropy(), lam=3.0, gradient=False,
                         divide_by_classes=True)
    back = round_trip(lit)
    assert (back.lam, back.gradient, back.divide_by_classes) == (3.0, False, True)


def test_base_must_be_a_loss():
    with pytest.raises(TypeError):
        CalibratedLoss("categorical_crossentropy")


def _tiny_model(reg=None, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8,))
    out = keras.layers.Dense(K, activation="softmax", activity_regularizer=reg,
                             name="predictions")(inp)
    return keras.Model(inp, out)


def test_each_loss_trains_one_step_without_nan():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    y = np.eye(K, dtype=np.float32)[rng.integers(0, K, 16)]
    for name in CLASSIFICATION_LOSS_NAMES:
        loss, reg = get_classification_loss(name).build()
        model = _tiny_model(reg)
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss,
                      jit_compile=False)
        before = [w.numpy().copy() for w in model.trainable_weights]
        value = model.train_on_batch(x, y)
        assert np.isfinite(value), name
        after = [w.numpy() for w in model.trainable_weights]
        assert any(np.any(a != b) for a, b in zip(after, before)), name
        assert all(np.all(np.isfinite(a)) for a in after), name


def test_save_and_reload_with_entropy_regularizer(tmp_path):
    model = _tiny_model(EntropyRegularizer(2.0))
    model.compile(optimizer="sgd", loss=get_classification_loss("cal_cce").make_loss())
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    act = back.get_layer("predictions").activity_regularizer
    assert isinstance(act, EntropyRegularizer) and act.beta == 2.0
    assert isinstance(back.loss, CalibratedLoss) and back.loss.lam == 10.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-6)
