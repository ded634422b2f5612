"""mtpret eq. (4) against NumPy, through an optimizer."""

import keras
import numpy as np
import pytest

from cxr_keras.training.cyclic_cosine import CyclicCosine


def test_cyclic_cosine_against_numpy():
    sched = CyclicCosine(1e-2, 1e-4, cycle_steps=10)
    t = np.arange(35)
    expected = 1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + np.cos(2 * np.pi * (t % 10) / 10))
    got = np.array([float(sched(i)) for i in t])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] == pytest.approx(1e-2) and got[5] == pytest.approx(1e-4)  # max, then min
    assert got[10] == pytest.approx(1e-2)                                     # back to max


def test_cyclic_cosine_drives_an_optimizer_and_round_trips():
    sched = CyclicCosine(0.1, 0.0, cycle_steps=4)
    v = keras.Variable(np.zeros(1, "float32"))
    opt = keras.optimizers.SGD(sched)
    lrs = []
    for _ in range(4):
        before = float(np.asarray(v)[0])
        opt.apply_gradients([(np.ones(1, "float32"), v)])  # gradient 1: the step is -lr
        lrs.append(before - float(np.asarray(v)[0]))
    np.testing.assert_allclose(lrs, [0.1, 0.05, 0.0, 0.05], atol=1e-6)
    again = CyclicCosine.from_config(sched.get_config())
    assert float(again(6)) == pytest.approx(float(sched(6)))
    with pytest.raises(ValueError, match="cycle_steps"):
        CyclicCosine(0.1, 0.0, 0)
