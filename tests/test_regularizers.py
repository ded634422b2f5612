"""L2-SP against its formula in NumPy, with gradients, on a small model."""

import keras
import numpy as np
import pytest

from cxr_keras.regularizers import L2SP

from _models import value_and_grad  # tests/ is on sys.path under pytest


def test_l2sp_value_against_numpy_and_after_training_steps():
    rng = np.random.default_rng(0)
    body = keras.layers.Dense(4, name="body")
    head = keras.layers.Dense(2, name="head")
    body.build((None, 3))
    head.build((None, 4))
    reg = L2SP(alpha=0.3, beta=0.05)
    reg.anchor(body.trainable_variables)
    w0 = [np.asarray(v).copy() for v in body.trainable_variables]
    assert float(reg(body.trainable_variables)) == 0.0
    for v in body.trainable_variables + head.trainable_variables:  # move every weight
        v.assign(np.asarray(v) + rng.normal(size=v.shape).astype("float32"))
    expected = 0.15 * sum(((np.asarray(v, np.float64) - a) ** 2).sum()
                          for v, a in zip(body.trainable_variables, w0))
    expected += 0.025 * sum((np.asarray(v, np.float64) ** 2).sum() for v in head.trainable_variables)
    got = float(reg(body.trainable_variables, head.trainable_variables))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_l2sp_gradient_pulls_toward_the_anchor():
    v = keras.Variable(np.array([1.0, -2.0], "float32"))
    reg = L2SP(alpha=0.5, beta=0.0)
    reg.anchor([v])
    _, grad = value_and_grad(lambda x: reg([x]), [3.0, 0.0])
    np.testing.assert_allclose(grad, 0.5 * np.array([2.0, 2.0]))


def test_l2sp_refuses_bad_use():
    with pytest.raises(ValueError, match="alpha and beta"):
        L2SP(alpha=-1)
    v = keras.Variable(np.ones(2, "float32"))
    with pytest.raises(ValueError, match="anchor"):
        L2SP()([v])
    reg = L2SP()
    reg.anchor([v])
    with pytest.raises(ValueError, match="2 shared variables, 1 anchored"):
        reg([v, v])
    assert L2SP.from_config(L2SP(0.2, 0.1).get_config()).alpha == 0.2
