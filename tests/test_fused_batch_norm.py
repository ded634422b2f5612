"""FusedBatchNormalization against batch normalisation written out in NumPy.

Reference (Ioffe & Szegedy 2015, Alg. 1 and its gradient), per channel over every other axis:
``xhat = (x - mu) / sqrt(var + eps)`` with the biased batch variance, ``y = gamma xhat + beta``;
``dL/dx = gamma / sqrt(var + eps) * (g - mean(g) - xhat mean(g xhat))``, ``dL/dgamma = sum(g xhat)``,
``dL/dbeta = sum(g)`` for upstream gradient ``g``; moving statistics
``m <- momentum m + (1 - momentum) batch`` (Keras' convention: biased variance).
"""

import keras
import numpy as np
import pytest

from cxr_keras.layers import FusedBatchNormalization
from cxr_keras.models.batchnorm import with_fused_batch_norm

EPS, MOMENTUM = 1e-3, 0.9


def reference(x, gamma, beta, g):
    axes = tuple(range(x.ndim - 1))
    x = x.astype(np.float64)
    mu, var = x.mean(axes), x.var(axes)
    xhat = (x - mu) / np.sqrt(var + EPS)
    dx = gamma / np.sqrt(var + EPS) * (g - g.mean(axes) - xhat * (g * xhat).mean(axes))
    return gamma * xhat + beta, mu, var, dx, (g * xhat).sum(axes), g.sum(axes)


def layer_for(shape, **kwargs):
    layer = FusedBatchNormalization(epsilon=EPS, momentum=MOMENTUM, **kwargs)
    layer.build((None, *shape[1:]))
    channels = shape[-1]
    rng = np.random.default_rng(1)
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_mean.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return layer


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 3, 4, 2, 5), (7, 6)],
                         ids=["NHWC", "NDHWC", "dense (Keras' path)"])
def test_training_step_matches_the_numpy_formulas(shape):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 3 + 2).astype("float32")
    g = rng.normal(size=shape).astype("float32")
    layer = layer_for(shape)
    m0, v0 = (np.asarray(w) for w in (layer.moving_mean, layer.moving_variance))
    gamma, beta = np.asarray(layer.gamma), np.asarray(layer.beta)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * g)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma, layer.beta])
    y_ref, mu, var, dx_ref, dgamma_ref, dbeta_ref = reference(x, gamma, beta, g)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dgamma), dgamma_ref, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dbeta), dbeta_ref, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), MOMENTUM * m0 + (1 - MOMENTUM) * mu,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance),
                               MOMENTUM * v0 + (1 - MOMENTUM) * var, rtol=1e-6, atol=1e-6)
    # inference: the moving statistics, untouched
    m1, v1 = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
    y_inf = layer(xt, training=False)
    np.testing.assert_allclose(np.asarray(y_inf), gamma * (x - m1) / np.sqrt(v1 + EPS) + beta,
                               atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer.moving_mean), m1)


def test_training_runs_the_fused_kernel_on_tensorflow():
    import tensorflow as tf

    layer = layer_for((2, 3, 3, 4))
    step = tf.function(lambda x: layer(x, training=True))
    ops = {op.type for op in step.get_concrete_function(
        tf.TensorSpec((2, 3, 3, 4), tf.float32)).graph.get_operations()}
    assert "FusedBatchNormV3" in ops
    frozen = layer_for((2, 3, 3, 4))
    frozen.trainable = False  # Keras: a frozen batch norm runs on its moving statistics
    infer = tf.function(lambda x: frozen(x, training=True))
    assert "FusedBatchNormV3" not in {op.type for op in infer.get_concrete_function(
        tf.TensorSpec((2, 3, 3, 4), tf.float32)).graph.get_operations()}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_half_precision_inputs_keep_their_dtype_and_float32_statistics(policy):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(4, 5, 5, 3)) * 2 + 1).astype("float32")
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = layer_for(x.shape)
        y = layer(keras.ops.cast(x, layer.compute_dtype), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(layer.moving_variance.dtype) == "float32"
    y_ref = reference(x, np.asarray(layer.gamma), np.asarray(layer.beta), np.zeros_like(x))[0]
    tol = 0.05 if policy == "mixed_bfloat16" else 5e-3  # 8 / 11 bits of mantissa, |y| < 8
    np.testing.assert_allclose(np.asarray(keras.ops.cast(y, "float32")), y_ref, atol=tol)


def test_with_fused_batch_norm_keeps_names_weights_and_outputs():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype("float32") + (w.ndim == 1) * 2
                       for w in model.get_weights()])
    fused = with_fused_batch_norm(model)
    assert [type(layer).__name__ for layer in fused.layers] == [
        "InputLayer", "Conv2D", "FusedBatchNormalization", "Activation"]
    assert [layer.name for layer in fused.layers] == [layer.name for layer in model.layers]
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(fused(x, training=False)),
                                  np.asarray(model(x, training=False)))


def test_every_builder_uses_the_fused_layer():
    """Our builders (reduced here) and the converted keras.applications backbone: no batch norm
    is Keras' own layer."""
    from cxr_keras.models import densenet, efficientnet_unet, res2net50, resnet18
    from cxr_keras.models.backbones import multiscale_backbone

    models = [densenet((1, 1, 1, 1), input_shape=(32, 32, 3)),
              resnet18(input_shape=(32, 32, 3), widths=(4, 4, 8, 8)),
              res2net50(input_shape=(32, 32, 3), blocks=(1, 1, 1, 1), planes=(16, 16, 16, 16),
                        base_width=4, stem_width=4),
              efficientnet_unet((32, 32, 3), weights=None, width_coefficient=0.25,
                                depth_coefficient=0.25, decoder_filters=(8, 8, 8, 8, 8)),
              multiscale_backbone("keras_resnet50", input_shape=(32, 32, 3))]
    for model in models:
        norms = [type(layer).__name__ for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and set(norms) == {"FusedBatchNormalization"}, (model.name, set(norms))
