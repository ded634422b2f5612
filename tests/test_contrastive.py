"""MoCo v2 and SimCLR: InfoNCE and NT-Xent against NumPy, the queue and the momentum update exact
after a training step (TF and JAX), reload, and a contrastive task learnt well above an untrained
encoder and chance."""

import importlib.util

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

from cxr_keras.models.contrastive import MoCo, SimCLR, cross_entropy_first, info_nce_logits, nt_xent

from _models import last_json, run_on_jax  # tests/ is on sys.path under pytest

HAS_JAX = importlib.util.find_spec("jax") is not None


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _encoder(seed=0, width=6):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name="enc")


def test_info_nce_against_numpy():
    rng = np.random.default_rng(0)
    q, k, queue = (_unit(rng.normal(size=s)).astype("float32") for s in ((4, 8), (4, 8), (10, 8)))
    loss, acc = cross_entropy_first(info_nce_logits(q, k, queue, 0.2))
    pos = (q * k).sum(1) / 0.2
    neg = q @ queue.T / 0.2
    expected = np.mean(-pos + logsumexp(np.concatenate([pos[:, None], neg], 1), axis=1))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(acc), np.mean(pos > neg.max(1)))


def test_nt_xent_against_numpy():
    rng = np.random.default_rng(1)
    z1, z2 = (_unit(rng.normal(size=(5, 8))).astype("float32") for _ in range(2))
    loss, _ = nt_xent(z1, z2, 0.5)
    z = np.concatenate([z1, z2]).astype(np.float64)
    n, terms = 5, []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        s = z[i] @ z[others].T / 0.5
        terms.append(-(z[i] @ z[(i + n) % (2 * n)] / 0.5) + logsumexp(s))
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)


def _moco(queue_size=6, momentum=0.9):
    model = MoCo(_encoder(), dim=4, hidden=8, queue_size=queue_size, momentum=momentum,
                 temperature=0.2, seed=0)
    model.compile(keras.optimizers.SGD(0.1))
    return model


def test_moco_queue_and_momentum_update_after_each_step():
    rng = np.random.default_rng(2)
    model = _moco()
    for k, q in model._pairs:  # the key encoder starts as a copy
        np.testing.assert_array_equal(np.asarray(k), np.asarray(q))
    xq, xk = (rng.normal(size=(4, 8, 8, 3)).astype("float32") for _ in range(2))
    queue0 = np.asarray(model.queue).copy()
    keys = np.asarray(model((xq, xk), training=False)["k"])
    keys_before = [np.asarray(k).copy() for k, _ in model._pairs]
    model.train_on_batch((xq, xk))
    queue = np.asarray(model.queue)
    np.testing.assert_allclose(queue[:4], keys, atol=1e-6)       # this batch's keys
    np.testing.assert_array_equal(queue[4:], queue0[4:])         # the rest untouched
    assert int(model.queue_ptr) == 4
    for (k, q), k0 in zip(model._pairs, keys_before):           # MoCo eq. (2), after the step
        np.testing.assert_allclose(np.asarray(k), 0.9 * k0 + 0.1 * np.asarray(q), atol=1e-6)
    keys2 = np.asarray(model((xk, xq), training=False)["k"])
    model.train_on_batch((xk, xq))                               # wraps around: rows 4, 5, 0, 1
    queue = np.asarray(model.queue)
    np.testing.assert_allclose(queue[[4, 5, 0, 1]], keys2, atol=1e-6)
    np.testing.assert_allclose(queue[2:4], keys[2:4], atol=1e-6)
    assert int(model.queue_ptr) == 2
    # no gradient reaches the key encoder: it is not among the trained variables
    trained = {id(v) for v in model.trainable_variables}
    assert not any(id(k) in trained for k, _ in model._pairs)


def test_contrastive_models_reload_with_safe_mode(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(2, 8, 8, 3)).astype("float32"),) * 2
    for model in (_moco(), SimCLR(_encoder(), dim=4, hidden=8)):
        model.compile(keras.optimizers.SGD(0.1))
        model.train_on_batch(x)
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        again = keras.saving.load_model(path, safe_mode=True)
        a, b = model(x)["loss_value"], again(x)["loss_value"]
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
        if isinstance(model, MoCo):
            np.testing.assert_array_equal(np.asarray(again.queue), np.asarray(model.queue))
            assert int(again.queue_ptr) == int(model.queue_ptr)


BATCH = 16


def _views(x, seed):
    """A view of images ``x``: channels 0-1 with a little noise (what identifies the image),
    channel 2 replaced by strong noise (a nuisance that dominates an untrained encoder's features,
    so the positive is found only once the encoder has learnt to ignore it)."""
    import tensorflow as tf

    content = x[..., :2] + tf.random.normal(tf.shape(x[..., :2]), stddev=0.1, seed=seed)
    return tf.concat([content, tf.random.normal(tf.shape(x[..., :1]), stddev=3.0, seed=seed + 10)],
                     axis=-1)


def _pairs_dataset(n=256, seed=0):
    """Two views of n distinct random images: the positive is findable only by content."""
    import tensorflow as tf

    base = np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(base).repeat().shuffle(n, seed=seed).batch(BATCH)
    return ds.map(lambda x: ((_views(x, 1), _views(x, 2)),))


def _retrieval_accuracy(encoder, a, b):
    """Fraction of images whose view ``a`` has its own view ``b`` as nearest neighbour (cosine of
    the encoder's features) among all the ``b`` views; chance is 1 / len(a)."""
    fa, fb = (np.array(encoder(v, training=False), np.float64) for v in (a, b))
    fa, fb = _unit(fa), _unit(fb)
    return float(np.mean((fa @ fb.T).argmax(axis=1) == np.arange(len(fa))))


def test_accuracy_counts_a_tie_as_a_miss():
    # a collapsed encoder gives equal logits: no hits (argmax would credit the first column)
    loss, acc = cross_entropy_first(np.zeros((4, 7), "float32"))
    assert float(acc) == 0.0 and float(loss) == pytest.approx(np.log(7))
    z = np.ones((3, 4), "float32") / 2
    assert float(nt_xent(z, z, 0.5)[1]) == 0.0
    rng = np.random.default_rng(4)
    z1, z2 = (_unit(rng.normal(size=(5, 8))).astype("float32") for _ in range(2))
    sim = np.concatenate([z1, z2]) @ np.concatenate([z1, z2]).T
    np.fill_diagonal(sim, -np.inf)
    pos = (np.arange(10) + 5) % 10
    others = sim.copy()
    others[np.arange(10), pos] = -np.inf
    assert float(nt_xent(z1, z2, 0.5)[1]) == pytest.approx(
        np.mean(sim[np.arange(10), pos] > others.max(axis=1)))


@pytest.mark.parametrize("kind", ["moco", "simclr"])
def test_contrastive_pretraining_finds_the_positive_well_above_chance(kind):
    """Held-out retrieval with the encoder's features, against the same encoder before training
    (which the nuisance channel keeps near chance) and against chance; the logged training
    accuracy against its chance from the configuration."""
    import tensorflow as tf

    queue = 32
    encoder = _encoder(width=32)
    model = (MoCo(encoder, dim=16, hidden=32, queue_size=queue, momentum=0.9, seed=0)
             if kind == "moco" else SimCLR(encoder, dim=16, hidden=32, temperature=0.2))
    held_out = tf.constant(np.random.default_rng(100).normal(size=(64, 8, 8, 3)), "float32")
    a, b = _views(held_out, 3), _views(held_out, 4)
    untrained = _retrieval_accuracy(encoder, a, b)
    model.compile(keras.optimizers.Adam(3e-3))
    hist = model.fit(_pairs_dataset(), epochs=6, steps_per_epoch=20, verbose=0).history
    trained = _retrieval_accuracy(encoder, a, b)
    chance, margin = 1 / len(a), 0.3
    assert trained > untrained + margin and trained > 10 * chance, (
        f"held-out retrieval {trained:.3f}: not {margin} above the untrained encoder's "
        f"{untrained:.3f}, or not 10 x chance (1/{len(a)})")
    # the logged top-1 and loss: the positive among 1 + queue keys (MoCo), 2 x batch - 1 views
    # (SimCLR); logits that carry nothing give accuracy 1 / candidates and loss log(candidates).
    # (Not loss[0]: MoCo's first epoch starts on a queue of random keys, which are easy.)
    candidates = 1 + queue if kind == "moco" else 2 * BATCH - 1
    assert hist["contrast_acc"][-1] > 10 / candidates, (hist["contrast_acc"], candidates)
    assert hist["loss"][-1] < np.log(candidates), (hist["loss"], np.log(candidates))


JAX_CHECK = r"""
import json, numpy as np, keras
from cxr_keras.models.contrastive import MoCo
keras.utils.set_random_seed(0)
inp = keras.Input((8, 8, 3))
x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(6, 3, name="conv")(inp))
enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
m = MoCo(enc, dim=4, hidden=8, queue_size=6, momentum=0.9, seed=0)
m.compile(keras.optimizers.SGD(0.1))
rng = np.random.default_rng(0)
xq, xk = (rng.normal(size=(4, 8, 8, 3)).astype("float32") for _ in range(2))
keys = np.asarray(m((xq, xk))["k"])
before = [np.asarray(k).copy() for k, _ in m._pairs]
m.fit(x=(xq, xk), epochs=1, batch_size=4, shuffle=False, verbose=0)
err = max(float(np.abs(np.asarray(k) - (0.9 * k0 + 0.1 * np.asarray(q))).max())
          for (k, q), k0 in zip(m._pairs, before))
print(json.dumps({"backend": keras.backend.backend(), "ptr": int(m.queue_ptr),
                  "queue_err": float(np.abs(np.asarray(m.queue)[:4] - keys).max()), "ema_err": err}))
"""


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_moco_step_on_the_jax_backend():
    info = last_json(run_on_jax(JAX_CHECK))
    assert info["backend"] == "jax" and info["ptr"] == 4, info
    assert info["queue_err"] < 1e-5 and info["ema_err"] < 1e-5, info
