"""Small models shared by the tests."""

import keras


def tiny_backbone(size, channels):
    """A small stand-in for DenseNet121: a 7x7 (at size 28) feature map from a layer named "relu"."""
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="stem_conv")(inp)
    x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    return keras.Model(inp, x, name="tiny_backbone")


def run_on_jax(code: str, timeout: int = 300) -> str:
    """Run ``code`` in a fresh Python with ``KERAS_BACKEND=jax`` on the CPU; fail the test with
    its stderr if it fails; return its stdout."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def last_json(stdout: str):
    """The JSON object on the last line of ``stdout``."""
    import json

    return json.loads(stdout.strip().splitlines()[-1])


def value_and_grad(fn, x):
    """``fn(x)`` (a scalar) and its gradient with respect to the array ``x``, as NumPy, on the
    active Keras backend (a gradient that does not reach ``x`` is zero)."""
    import keras
    import numpy as np

    x = np.asarray(x, np.float32)
    if keras.backend.backend() == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda a: fn(a))(jax.numpy.asarray(x))
        return np.asarray(value), np.asarray(grad)
    import tensorflow as tf

    var = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(var)
        value = fn(var)
    grad = tape.gradient(value, var, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return np.asarray(value), np.asarray(grad)


def on_tensorflow():
    import keras

    return keras.backend.backend() == "tensorflow"
