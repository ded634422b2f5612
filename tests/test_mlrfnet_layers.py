"""MLRFNet building blocks (ECA eq. 1, CSRA eq. 2, biased focal loss eqs. 3-4) against
independent NumPy references, plus gradients and .keras save/reload with safe_mode=True."""

import json
import textwrap

import keras
import numpy as np
import pytest
import scipy.special

from cxr_keras.layers import CSRA, ECA
from cxr_keras.losses import BiasedFocalLoss, biased_focal_loss

from _cli import python  # tests/ is on sys.path under pytest
from _models import value_and_grad
from _serialization import round_trip

# ---------------------------------------------------------------- NumPy references (float64)

def np_eca(x, w):
    """eq. (1) with ECA-Net's zero-padded Conv1d (a cross-correlation) over the channel axis."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    pad = (len(w) - 1) // 2
    gap = x.mean(axis=(1, 2))
    conv = np.stack([np.correlate(np.pad(row, pad), w, mode="valid") for row in gap])
    assert conv.shape == gap.shape
    return x * scipy.special.expit(conv)[:, None, None, :]


def np_csra(x, w, lam, temperature, normalize):
    """eq. (2): mean over positions + lam * softmax(T mu)-weighted sum (or the max for 'max')."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    mu = np.einsum("bhwc,cn->bhwn", x, w)
    if normalize:
        mu = mu / np.linalg.norm(w, axis=0)
    mu = mu.reshape(mu.shape[0], -1, mu.shape[-1])            # (B, HW, N)
    if temperature == "max":
        att = mu.max(axis=1)
    else:
        att = (scipy.special.softmax(temperature * mu, axis=1) * mu).sum(axis=1)
    return mu.mean(axis=1) + lam * att


def np_bfl(y, z, alpha, beta, shift, from_logits=True):
    """eqs. (3)-(4), naive float64 (moderate logits only); NaN targets give NaN here."""
    y = np.asarray(y, np.float64)
    z = np.asarray(z, np.float64)
    if from_logits:
        p = 1.0 / (1.0 + np.exp(-z))
    else:
        p = np.clip(z, 1e-7, 1 - 1e-7)
    return (-alpha * (1 - p) ** beta * y * np.log(p)
            - (1 - alpha) * np.maximum(p - shift, 0.0) ** beta * (1 - y) * np.log(1 - p))


def _features(seed=0, shape=(3, 5, 4, 11), scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _targets(seed=0, shape=(6, 5), nan_frac=0.2):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, shape).astype(np.float32)
    y = (rng.random(shape) < 0.3).astype(np.float32)
    y[rng.random(shape) < nan_frac] = np.nan
    return y, z


# ---------------------------------------------------------------- ECA

@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_eca_matches_numpy(k):
    x = _features(k)
    layer = ECA(k)
    layer.build(x.shape)
    w = np.random.default_rng(10 + k).normal(size=(k,)).astype(np.float32)  # asymmetric taps
    layer.kernel.assign(w)
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, np_eca(x, w), rtol=1e-5, atol=1e-6)
    assert layer.flops(x.shape) == x.shape[-1] * k
    assert len(layer.trainable_weights) == 1 and layer.kernel.shape == (k,)


def test_eca_rejects_even_kernel():
    for bad in (0, 2, 4, 2.5):
        with pytest.raises(ValueError):
            ECA(bad)


# ---------------------------------------------------------------- CSRA

@pytest.mark.parametrize("temperature", [99, 1.0, "max"])
@pytest.mark.parametrize("normalize", [False, True])
def test_csra_matches_numpy(temperature, normalize):
    # Small features: T * mu spans O(1) over positions, so the T = 99 softmax is NOT the max
    # (a T == 99 -> max-pooling shortcut, as in CSRA's code, fails here).
    x = _features(1, scale=0.02 if temperature == 99 else 1.0)
    layer = CSRA(4, lam=0.3, temperature=temperature, normalize=normalize)
    out = keras.ops.convert_to_numpy(layer(x))
    w = layer.kernel.numpy()
    assert out.shape == (x.shape[0], 4) and w.shape == (x.shape[-1], 4)
    ref = np_csra(x, w, 0.3, temperature, normalize)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    if temperature == 99:
        assert np.abs(ref - np_csra(x, w, 0.3, "max", normalize)).max() > 1e-3
    assert layer.flops(x.shape) == 5 * 4 * 11 * 4


def test_csra_t99_close_to_max_and_stable():
    x = _features(2)
    w = np.random.default_rng(3).normal(size=(11, 6)).astype(np.float32)
    soft, hard = CSRA(6, 0.5, temperature=99), CSRA(6, 0.5, temperature="max")
    for layer in (soft, hard):
        layer.build(x.shape)
        layer.kernel.assign(w)
    out_soft = keras.ops.convert_to_numpy(soft(x))
    out_max = keras.ops.convert_to_numpy(hard(x))
    np.testing.assert_allclose(out_soft, out_max, atol=0.05)
    assert not np.allclose(out_soft, out_max, rtol=0, atol=1e-7)   # literal softmax, not max
    # Large scores: a naive exp(99 * mu) would overflow; the stable softmax tends to the max.
    big_soft = keras.ops.convert_to_numpy(soft(x * 1e3))
    big_max = keras.ops.convert_to_numpy(hard(x * 1e3))
    assert np.isfinite(big_soft).all()
    np.testing.assert_allclose(big_soft, big_max, rtol=1e-4)
    inf_layer = CSRA(6, 0.5, temperature=float("inf"))
    assert inf_layer.temperature == "max"


def test_csra_config_roundtrip_and_validation():
    for t, stored in ((99, 99.0), (0.5, 0.5), ("max", "max"), (float("inf"), "max")):
        layer = CSRA(3, 0.1, temperature=t, normalize=True, name="h")
        config = layer.get_config()
        assert config["temperature"] == stored
        json.dumps(config)                                   # JSON-safe (no inf)
        clone = CSRA.from_config(config)
        assert clone.get_config() == config
    for bad in (0, -1.0, "softmax", float("nan")):
        with pytest.raises(ValueError):
            CSRA(3, 0.1, temperature=bad)


# ---------------------------------------------------------------- biased focal loss

@pytest.mark.parametrize("alpha,beta,shift", [(0.4, 2.0, 0.2), (0.25, 1.0, 0.0), (0.7, 0.5, 0.5)])
def test_bfl_matches_numpy_with_nan_mask(alpha, beta, shift):
    y, z = _targets(int(10 * alpha))
    loss = BiasedFocalLoss(alpha=alpha, beta=beta, shift=shift)
    ref_elem = np_bfl(y, z, alpha, beta, shift)
    valid = ~np.isnan(y)
    assert valid.sum() < y.size                                       # NaNs present
    np.testing.assert_allclose(float(loss(y, z)), ref_elem[valid].mean(), rtol=1e-5)
    elem = keras.ops.convert_to_numpy(biased_focal_loss(y, z, alpha, beta, shift))
    np.testing.assert_allclose(elem[valid], ref_elem[valid], rtol=1e-5, atol=1e-7)
    assert (elem[~valid] == 0).all()
    # Without NaN targets: the plain mean of eq. (3) over the batch.
    y0 = np.nan_to_num(y, nan=1.0)
    np.testing.assert_allclose(float(loss(y0, z)), np_bfl(y0, z, alpha, beta, shift).mean(),
                               rtol=1e-5)


def test_bfl_defaults_shift_and_probabilities():
    loss = BiasedFocalLoss()
    assert (loss.alpha, loss.beta, loss.shift, loss.from_logits) == (0.4, 2.0, 0.2, True)
    # Negatives with p <= s give exactly zero loss (eq. 4).
    z_easy = np.log(np.array([[0.05, 0.1, 0.19]]) / (1 - np.array([[0.05, 0.1, 0.19]])))
    assert float(loss(np.zeros((1, 3), np.float32), z_easy.astype(np.float32))) == 0.0
    y, z = _targets(5)
    p = scipy.special.expit(z.astype(np.float64)).astype(np.float32)
    prob_loss = BiasedFocalLoss(from_logits=False)
    valid = ~np.isnan(y)
    ref = np_bfl(y, p, 0.4, 2.0, 0.2, from_logits=False)[valid].mean()
    np.testing.assert_allclose(float(prob_loss(y, p)), ref, rtol=1e-5)
    np.testing.assert_allclose(float(prob_loss(y, p)), float(loss(y, z)), rtol=1e-4)
    assert float(loss(np.full((2, 3), np.nan, np.float32), np.ones((2, 3), np.float32))) == 0.0


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_bfl_shift0_alpha_half_is_half_focal(beta):
    y, z = _targets(7, nan_frac=0.0)
    elem = keras.ops.convert_to_numpy(biased_focal_loss(y, z, alpha=0.5, beta=beta, shift=0.0))
    focal = keras.ops.convert_to_numpy(keras.losses.binary_focal_crossentropy(
        y[..., None], z[..., None], apply_class_balancing=False, gamma=beta, from_logits=True))
    np.testing.assert_allclose(elem, 0.5 * focal, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("shift", [0.2, 0.0])
def test_bfl_gradient_finite_and_correct(beta, shift):
    # +-50 and +-200 (sigmoid exactly 0 or 1 in float32: 0 ** beta must not give inf * 0 = NaN).
    z = np.array([[50.0, -50.0, 50.0, -50.0, 200.0, -200.0, 200.0, -200.0, 0.3, -1.2, 0.0]],
                 np.float32)
    y = np.array([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, np.nan]], np.float32)
    loss = BiasedFocalLoss(beta=beta, shift=shift)
    value, grad = value_and_grad(lambda v: loss(y, v), z)
    assert np.isfinite(float(value)) and np.isfinite(grad).all(), grad
    assert grad[0, -1] == 0.0                                         # NaN target: no gradient
    n_valid = 10
    # Central differences of the NumPy reference at the moderate logits (mean over valid entries).
    for j in (8, 9):
        h = 1e-4
        zp, zm = np.float64(z[0, j]) + h, np.float64(z[0, j]) - h
        yj = float(y[0, j])
        num = (np_bfl(yj, zp, 0.4, beta, shift) - np_bfl(yj, zm, 0.4, beta, shift)) / (2 * h)
        np.testing.assert_allclose(grad[0, j], num / n_valid, rtol=1e-3)


def test_bfl_serialize_roundtrip():
    loss = BiasedFocalLoss(alpha=0.3, beta=1.0, shift=0.1, from_logits=False, name="bfl")
    clone = round_trip(loss)
    y, z = _targets(9)
    p = scipy.special.expit(z).astype(np.float32)
    assert float(clone(y, p)) == float(loss(y, p))
    with pytest.raises(ValueError):
        BiasedFocalLoss(shift=1.0)


# ---------------------------------------------------------------- .keras save / reload

_RELOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import cxr_keras  # registers ECA, CSRA and BiasedFocalLoss
    path, x_path, out_path = sys.argv[1:4]
    model = keras.saving.load_model(path, safe_mode=True)
    np.save(out_path, keras.ops.convert_to_numpy(model(np.load(x_path))))
    cfg = {l.name: l.get_config() for l in model.layers}
    assert cfg["eca"]["kernel_size"] == 5, cfg["eca"]
    assert cfg["csra_soft"]["temperature"] == 99.0 and not cfg["csra_soft"]["normalize"]
    assert cfg["csra_max"]["temperature"] == "max" and cfg["csra_max"]["normalize"]
    assert type(model.loss).__name__ == "BiasedFocalLoss" and model.loss.shift == 0.2, model.loss
""")


def test_keras_file_reload_safe_mode_fresh_process(tmp_path):
    inp = keras.Input((6, 5, 7))
    feat = ECA(5, name="eca")(inp)
    out = keras.layers.Add()([CSRA(3, 0.5, temperature=99, name="csra_soft")(feat),
                              CSRA(3, 0.1, temperature="max", normalize=True, name="csra_max")(feat)])
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss=BiasedFocalLoss())
    x = _features(4, shape=(2, 6, 5, 7))
    expected = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "tiny.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    result = python(_RELOAD, path, tmp_path / "x.npy", tmp_path / "out.npy", cwd=tmp_path,
                    env={"TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
