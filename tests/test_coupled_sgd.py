"""SGD with PyTorch's (coupled) weight decay against a NumPy transcription of torch.optim.SGD, and
mtpret's switch between it and Keras' decoupled weight decay."""

import keras
import numpy as np

from cxr_keras.recipes import mtpret
from cxr_keras.training import CoupledDecaySGD

from _serialization import round_trip


def test_two_steps_match_pytorch_sgd_with_weight_decay():
    lr, mu, wd = 0.1, 0.9, 0.01
    w0 = np.array([1.0, -2.0, 0.5], np.float64)
    grads = [np.array([0.3, 0.1, -0.2]), np.array([-0.1, 0.4, 0.2])]
    # torch.optim.SGD: d = g + wd w; buf = d (first step), then mu buf + d; w -= lr buf
    w, buf = w0.copy(), None
    for g in grads:
        d = g + wd * w
        buf = d if buf is None else mu * buf + d
        w = w - lr * buf
    var = keras.Variable(w0.astype("float32"))
    opt = CoupledDecaySGD(lr, momentum=mu, coupled_weight_decay=wd)
    for g in grads:
        opt.apply_gradients([(g.astype("float32"), var)])
    np.testing.assert_allclose(np.asarray(var), w, rtol=1e-6)
    assert round_trip(opt).coupled_weight_decay == wd


def test_mtpret_pretraining_weight_decay_mode():
    decoupled = mtpret.pretrain_optimizer(mtpret.Config(), 0.03)
    assert type(decoupled) is keras.optimizers.SGD and decoupled.weight_decay == 1e-4
    cfg, _ = mtpret.from_command_line(["--set", "pretrain_decay_mode=coupled"])
    coupled = mtpret.pretrain_optimizer(cfg, 0.03)
    assert isinstance(coupled, CoupledDecaySGD) and coupled.coupled_weight_decay == 1e-4
    assert not coupled.weight_decay
