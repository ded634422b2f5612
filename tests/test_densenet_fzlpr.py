"""DenseNet121 + custom top (fzlpr paper, Sec. 3.2): parameter counts, structure, freezing, saving."""

import textwrap

import keras
import numpy as np
import pytest

from cxr_keras.losses import FZLPR
from cxr_keras.models import TOP_LAYER_NAMES, densenet121_fzlpr, set_backbone_trainable, top_layers

import _models  # noqa: E402  (tests/ is on sys.path under pytest)
from _cli import python


def _n_params(layers):
    return sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights)


def tiny_backbone(size=28, channels=16):
    return _models.tiny_backbone(size, channels)


@pytest.fixture(scope="module")
def full_model():
    keras.utils.set_random_seed(0)
    return densenet121_fzlpr(num_classes=14, weights=None)


def test_parameter_counts_match_paper(full_model):
    top = top_layers(full_model)
    assert _n_params(top) == 2_731_142
    backbone = [layer for layer in full_model.layers if layer.name not in TOP_LAYER_NAMES]
    assert _n_params(backbone) == 7_037_504
    assert full_model.count_params() == 9_768_646


def test_structure_and_output_shape(full_model):
    assert full_model.output.shape == (None, 14)
    assert full_model.get_layer("relu").output.shape == (None, 7, 7, 1024)
    assert full_model.layers[-len(TOP_LAYER_NAMES):] == top_layers(full_model)
    c1, c2 = full_model.get_layer("top_conv1"), full_model.get_layer("top_conv2")
    assert (c1.filters, c1.kernel_size, c1.strides, c1.padding) == (256, (3, 3), (1, 1), "valid")
    assert (c2.filters, c2.kernel_size, c2.padding) == (128, (3, 3), "valid")
    assert full_model.get_layer("top_dropout").rate == 0.1
    assert full_model.get_layer("top_flatten").output.shape == (None, 1152)
    assert full_model.get_layer("top_dense1").units == 64
    assert full_model.get_layer("logits").units == 14
    assert isinstance(full_model.get_layer("logits_bn"), keras.layers.BatchNormalization)
    assert full_model.get_layer("top_relu2").output.shape == (None, 3, 3, 128)
    out = full_model.predict_on_batch(np.zeros((1, 224, 224, 3), np.float32))
    assert out.shape == (1, 14) and np.all(np.isfinite(out))


def test_backbone_weights_from_local_file(tmp_path):
    keras.utils.set_random_seed(1)
    base = keras.applications.DenseNet121(include_top=False, weights=None,
                                          input_shape=(224, 224, 3))
    assert base.count_params() == 7_037_504            # keras' own DenseNet121 without top
    path = tmp_path / "backbone.weights.h5"
    base.save_weights(path)
    model = densenet121_fzlpr(weights=str(path))
    for name in ("conv1_conv", "conv5_block16_2_conv", "bn"):
        for a, b in zip(model.get_layer(name).get_weights(), base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_set_backbone_trainable_freezes_all_but_top():
    keras.utils.set_random_seed(2)
    model = densenet121_fzlpr(num_classes=5, base=tiny_backbone())
    top_trainable = sum(int(np.prod(w.shape)) for layer in top_layers(model)
                        for w in layer.trainable_weights)
    set_backbone_trainable(model, False)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == top_trainable
    assert not model.get_layer("stem_conv").trainable and model.get_layer("top_conv1").trainable
    # A frozen BatchNormalization runs in inference mode even when training=True.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 0.3, np.float32))
    feat = keras.Model(model.input, model.get_layer("relu").output)
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 3)).astype(np.float32)
    np.testing.assert_allclose(feat(x, training=True), feat(x, training=False), atol=1e-6)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.3)
    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) == sum(len(layer.trainable_weights)
                                               for layer in model.layers)
    assert model.get_layer("stem_conv").trainable
    assert not np.allclose(feat(x, training=True), feat(x, training=False), atol=1e-3)


def test_keras_file_reloads_in_fresh_process(tmp_path):
    keras.utils.set_random_seed(3)
    model = densenet121_fzlpr(num_classes=4, base=tiny_backbone())
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=4e-3), loss=FZLPR(tau=0.2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 28, 28, 3)).astype(np.float32)
    y = (rng.random((6, 4)) < 0.4).astype(np.float32)
    model.fit(x, y, epochs=1, batch_size=3, verbose=0)   # non-trivial BN statistics
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict_on_batch(x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import cxr_keras  # registers every cxr_keras serialisable
        m = keras.saving.load_model({str(tmp_path / "m.keras")!r}, safe_mode=True)
        assert type(m.loss).__name__ == "FZLPR" and m.loss.tau == 0.2, m.loss
        m.get_layer("relu")
        np.save({str(tmp_path / "y.npy")!r}, m.predict_on_batch(np.load({str(tmp_path / "x.npy")!r})))
    """)
    res = python(script, cwd=tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)
