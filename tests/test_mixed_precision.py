"""Every custom layer and every loss of the package under Keras' mixed-precision policies.

For ``mixed_float16`` and ``mixed_bfloat16`` (float32 variables, half-precision compute): a tiny
model around each custom layer, and a tiny model trained with each loss, take one gradient step.
Checked against Keras' own mixed-precision contract, not against the code under test: the layer
computes (and returns) in the policy's compute dtype while its variables stay float32, the model
output is float32 (the last layer carries ``dtype="float32"``, as the Keras mixed-precision guide
advises), the loss value is a float32 scalar, finite, and every trainable variable receives a
finite, non-zero float32 gradient; the SGD step changes the weights and keeps them finite.

The policy is set inside a fixture and restored to "float32" whatever happens.
"""

import keras
import numpy as np
import pytest

from cxr_keras import losses as L
from cxr_keras.layers import CSRA, ECA
from cxr_keras.layers.roi_align import RoIAlign
from cxr_keras.losses.calibrated import CLASSIFICATION_LOSS_NAMES
from cxr_keras.models.res2net import ChannelSlice
from cxr_keras.models.vit import DropPath, PatchEmbedding, TokenPooling, TransformerBlock, ViTEmbedding

pytestmark = pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                                reason="gradients through TensorFlow or JAX only")

POLICIES = ("mixed_float16", "mixed_bfloat16")
HALF = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
B = 4


@pytest.fixture(params=POLICIES)
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    keras.utils.set_random_seed(0)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def loss_and_grads(model, compute_loss, inputs):
    """(loss, gradients of model.trainable_variables) for one training-mode forward pass;
    ``compute_loss(model_output)`` -> scalar; the model's own (regularisation) losses are added."""
    variables = model.trainable_variables
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            loss = compute_loss(out)
            extra = list(model.losses)
            if extra:
                loss = loss + keras.ops.sum(keras.ops.stack(
                    [keras.ops.cast(v, loss.dtype) for v in extra]))
        grads = tape.gradient(loss, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out, loss, grads
    import jax

    trainable = [v.value for v in variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def fn(tv):
        out, _, extra = model.stateless_call(tv, non_trainable, inputs, training=True,
                                             return_losses=True)
        loss = compute_loss(out)
        for v in extra:
            loss = loss + keras.ops.cast(v, loss.dtype)
        return loss, out

    (loss, out), grads = jax.value_and_grad(fn, has_aux=True)(trainable)
    return out, loss, grads


def one_step(model, compute_loss, inputs):
    """Checks shared by every case; returns the loss value."""
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    out, loss, grads = loss_and_grads(model, compute_loss, inputs)
    assert _dtype(out) == "float32", "the model's output layer should be float32"
    assert _dtype(loss) == "float32" and tuple(loss.shape) == (), (loss.dtype, loss.shape)
    value = float(keras.ops.convert_to_numpy(loss))
    assert np.isfinite(value), value
    assert model.trainable_variables
    for var, g in zip(model.trainable_variables, grads):
        assert _dtype(var) == "float32", var.path
        g = keras.ops.convert_to_numpy(g)
        assert g.dtype == np.float32, (var.path, g.dtype)
        assert np.all(np.isfinite(g)), f"{var.path}: non-finite gradient"
        assert np.any(g != 0), f"{var.path}: zero gradient"
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    keras.optimizers.SGD(0.01).apply_gradients(zip(grads, model.trainable_variables))
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(np.any(a != b) for a, b in zip(after, before))
    return value


def _head(x, units, activation=None, **kwargs):
    """The float32 output layer Keras' mixed-precision guide asks for."""
    return keras.layers.Dense(units, activation=activation, dtype="float32", name="head",
                              **kwargs)(x)


# -- custom layers ------------------------------------------------------------------------------

def _image(size=8, channels=3, name="image"):
    return keras.Input((size, size, channels), name=name)


def _csra(**kwargs):
    inp = _image()
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inp)
    subject = CSRA(num_classes=3, lam=0.3, name="subject", **kwargs)
    y = subject(x)
    out = keras.layers.Activation("linear", dtype="float32", name="head")(y)
    return keras.Model(inp, out), subject, [np.random.default_rng(0).normal(
        size=(B, 8, 8, 3)).astype("float32")]


def _eca():
    inp = _image()
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inp)
    subject = ECA(3, name="subject")
    x = keras.layers.GlobalAveragePooling2D()(subject(x))
    return keras.Model(inp, _head(x, 3)), subject, [
        np.random.default_rng(0).normal(size=(B, 8, 8, 3)).astype("float32")]


def _roi_align():
    inp = _image()
    boxes = keras.Input((2, 4), name="boxes")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    subject = RoIAlign(output_size=2, spatial_scale=1.0, sampling_ratio=2, name="subject")
    x = keras.layers.Flatten()(subject([x, boxes]))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 4, size=(B, 2, 2))
    box = np.concatenate([xy, xy + rng.uniform(1.5, 4, size=(B, 2, 2))], -1).astype("float32")
    return keras.Model([inp, boxes], _head(x, 3)), subject, [
        rng.normal(size=(B, 8, 8, 3)).astype("float32"), box]


def _channel_slice():
    inp = _image()
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inp)
    subject = ChannelSlice(2, 5, name="subject")
    x = keras.layers.GlobalAveragePooling2D()(subject(x))
    return keras.Model(inp, _head(x, 3)), subject, [
        np.random.default_rng(0).normal(size=(B, 8, 8, 3)).astype("float32")]


def _vit(pooling, positional, masked):
    """PatchEmbedding -> ViTEmbedding (optionally keeping a subset of tokens, MAE's encoder) ->
    TransformerBlock with stochastic depth -> DropPath -> TokenPooling."""
    inp = _image()
    tokens = PatchEmbedding(8, 4, name="patches")(inp)          # 2 x 2 grid of 8-wide tokens
    embed = ViTEmbedding((2, 2), positional=positional, name="embed")
    inputs = [np.random.default_rng(0).normal(size=(B, 8, 8, 3)).astype("float32")]
    if masked:
        ids = keras.Input((3,), dtype="int32", name="ids_keep")
        x = embed(tokens, ids)
        inputs.append(np.tile(np.array([[0, 2, 3]], np.int32), (B, 1)))
        model_inputs = [inp, ids]
    else:
        x, model_inputs = embed(tokens), inp
    x = TransformerBlock(8, 2, drop_path=0.25, seed=1, name="block")(x)
    x = DropPath(0.25, seed=2, name="subject")(x)
    x = TokenPooling(pooling, name="pool")(x)
    return keras.Model(model_inputs, _head(x, 3)), None, inputs


LAYER_CASES = {
    "csra": lambda: _csra(),
    "csra_max_normalized": lambda: _csra(temperature="max", normalize=True),
    "eca": _eca,
    "roi_align": _roi_align,
    "channel_slice": _channel_slice,
    "vit_cls_learned": lambda: _vit("cls", "learned", False),
    "vit_avg_sincos_masked": lambda: _vit("avg", "sincos", True),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_custom_layer_one_step(policy, case):
    model, subject, inputs = LAYER_CASES[case]()
    inputs = inputs[0] if len(inputs) == 1 else inputs
    half = HALF[policy]
    for layer in model.layers:
        if layer.name != "head" and layer.weights:
            assert layer.compute_dtype == half and layer.variable_dtype == "float32", layer.name
    if subject is not None:  # the layer's own output is in the compute dtype
        probe = keras.Model(model.input, subject.output)
        assert _dtype(probe(inputs)) == half, f"{case}: output is not {half}"
    else:
        for name in ("patches", "embed", "block", "subject", "pool"):
            probe = keras.Model(model.input, model.get_layer(name).output)
            assert _dtype(probe(inputs, training=True)) == half, f"{name}: output is not {half}"
    target = np.random.default_rng(1).normal(size=(B, 3)).astype("float32")
    one_step(model, lambda out: keras.ops.mean(keras.ops.square(out - target)), inputs)


def test_roi_align_keeps_box_coordinates_in_float32(policy):
    """Boxes near 1000 px: half precision rounds them (bfloat16 by up to 4 px, float16 by up to
    0.25 px); the layer must sample where a float32 RoI Align samples, up to the rounding of its
    half-precision output. Reference: the same function run entirely in float32."""
    from cxr_keras.layers.roi_align import roi_align

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(1, 80, 80, 2)).astype("float32")
    boxes = np.array([[[1001.3, 999.7, 1150.9, 1101.1], [1097.1, 1002.5, 1203.3, 1199.9]]],
                     "float32")
    expected = keras.ops.convert_to_numpy(roi_align(feats, boxes, 3, 1.0 / 16, 2))
    layer = RoIAlign(output_size=3, spatial_scale=1.0 / 16, sampling_ratio=2)
    got = layer([keras.ops.cast(feats, HALF[policy]), boxes])
    assert _dtype(got) == HALF[policy]
    got = keras.ops.convert_to_numpy(keras.ops.cast(got, "float32"))
    tol = 2.0 ** -7 if policy == "mixed_bfloat16" else 2.0 ** -10  # one rounding of the output
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * 2)


# -- losses -------------------------------------------------------------------------------------

def _multilabel_model(activation=None, activity_regularizer=None):
    inp = keras.Input((5,), name="x")
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inp)
    return keras.Model(inp, _head(x, 4, activation, activity_regularizer=activity_regularizer))


def _segmentation_model():
    inp = _image()
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="hidden")(inp)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.Model(inp, out)


def _ranking_data():
    rng = np.random.default_rng(2)
    y = (rng.random((B, 4)) < 0.4).astype("float32")
    y[0, 1] = np.nan  # an ignored label
    y[1] = [1, 0, 0, 0]
    return rng.normal(size=(B, 5)).astype("float32"), y


def _onehot_data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(B, 5)).astype("float32"), np.eye(4, dtype="float32")[[0, 1, 2, 1]]


def _mask_data():
    rng = np.random.default_rng(4)
    y = np.zeros((B, 8, 8, 1), "float32")
    y[:, 2:6, 1:5] = 1.0
    return rng.normal(size=(B, 8, 8, 3)).astype("float32"), y


RANKING_LOSSES = {
    "fzlpr": lambda: L.FZLPR(),
    "zlpr": lambda: L.ZLPR(),
    "masked_bce": lambda: L.MaskedBinaryLoss("bce"),
    "masked_focal": lambda: L.get_loss("focal"),
    "biased_focal": lambda: L.BiasedFocalLoss(),
}
SEGMENTATION_LOSSES = {
    "dice": lambda: L.DiceLoss(),
    "dice_per_image": lambda: L.DiceLoss(per_image=True),
    "bce_dice": lambda: L.BCEDiceLoss(),
    "tversky": lambda: L.TverskyLoss(),
    "focal_tversky": lambda: L.FocalTverskyLoss(),
}


def _loss_case(kind, name):
    """(model, loss callable on (y, output), x, y)."""
    if kind == "ranking":
        x, y = _ranking_data()
        return _multilabel_model(), RANKING_LOSSES[name](), x, y
    if kind == "classification":
        x, y = _onehot_data()
        loss, regularizer = L.get_classification_loss(name).build()
        return _multilabel_model("softmax", regularizer), loss, x, y
    x, y = _mask_data()
    return _segmentation_model(), SEGMENTATION_LOSSES[name](), x, y


LOSS_CASES = ([("ranking", n) for n in RANKING_LOSSES]
              + [("classification", n) for n in CLASSIFICATION_LOSS_NAMES]
              + [("segmentation", n) for n in SEGMENTATION_LOSSES])


def test_every_loss_is_covered():
    assert len(CLASSIFICATION_LOSS_NAMES) == 12
    assert {type(f()).__name__ for f in RANKING_LOSSES.values()} == {
        "FZLPR", "ZLPR", "MaskedBinaryLoss", "BiasedFocalLoss"}
    assert {type(f()).__name__ for f in SEGMENTATION_LOSSES.values()} == {
        "DiceLoss", "BCEDiceLoss", "TverskyLoss", "FocalTverskyLoss"}


@pytest.mark.parametrize("kind,name", LOSS_CASES, ids=[f"{k}-{n}" for k, n in LOSS_CASES])
def test_loss_one_step(policy, kind, name):
    model, loss_fn, x, y = _loss_case(kind, name)
    assert model.get_layer("hidden").compute_dtype == HALF[policy]
    one_step(model, lambda out: loss_fn(y, out), x)
    # the same loss on half-precision predictions (an output layer left in the compute dtype):
    # Keras' Loss casts them to its own float32 dtype
    pred = keras.ops.cast(model(x), HALF[policy])
    half_value = loss_fn(y, pred)
    assert _dtype(half_value) == "float32"
    assert np.isfinite(float(keras.ops.convert_to_numpy(half_value)))
