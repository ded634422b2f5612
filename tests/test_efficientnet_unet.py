"""EfficientNet-B0 U-Net, encoder classifier, model-level ensemble (multiloss, Sec. 2.2-2.3)."""


import keras
import numpy as np
import pytest

from cxr_keras.models.efficientnet_unet import (
    DECODER_FILTERS,
    DEEPEST_CONV,
    ENCODER_OUTPUT,
    ENSEMBLE_CONV,
    SKIP_LAYERS,
    TRUNCATE_AT,
    efficientnet_classifier,
    efficientnet_encoder,
    efficientnet_unet,
    model_level_ensemble,
)

from _serialization import reload_in_fresh_process, reload_keras_file

SMALL = 64  # spatial size of the quick models
WIDTH = 0.25  # width_coefficient of the quick models


def _n_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _predict(model, x):
    """Eager inference call (much cheaper than tracing ``predict`` for these one-off checks)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _images(n, size=SMALL, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def small_unet():
    keras.utils.set_random_seed(0)
    return efficientnet_unet((SMALL, SMALL, 3), weights=None, width_coefficient=WIDTH)


def test_full_size_unet_matches_segmentation_models():
    model = efficientnet_unet(weights=None)
    assert _n_trainable(model) == 10_071_501  # segmentation_models Unet('efficientnetb0')
    assert model.output.shape == (None, 256, 256, 1)
    for i in range(5):
        for part in ("a", "b"):
            for kind in ("conv", "bn", "relu"):
                model.get_layer(f"decoder_stage{i}{part}_{kind}")
        model.get_layer(f"decoder_stage{i}_upsampling")
        conv = model.get_layer(f"decoder_stage{i}a_conv")
        assert conv.filters == DECODER_FILTERS[i] and not conv.use_bias
        assert conv.kernel_size == (3, 3) and conv.padding == "same"
    head = model.get_layer("final_conv")
    assert head.filters == 1 and head.kernel_size == (3, 3) and head.use_bias
    assert model.layers[-1].name == "sigmoid" and model.layers[-1].dtype_policy.name == "float32"
    assert model.get_layer(ENCODER_OUTPUT).output.shape == (None, 8, 8, 1280)  # 1/32
    # stage i concatenates the upsampled map with SKIP_LAYERS[i] at 1/16, 1/8, 1/4, 1/2
    for i, skip in enumerate(SKIP_LAYERS):
        concat = model.get_layer(f"decoder_stage{i}_concat")
        side = 256 // 2 ** (4 - i)
        assert [t.shape[1:3] for t in concat.input] == [(side, side)] * 2
        assert concat.input[1] is model.get_layer(skip).output
    with pytest.raises(ValueError):
        model.get_layer("decoder_stage4_concat")  # last stage has no skip


def test_weights_argument(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        efficientnet_encoder((SMALL, SMALL, 3), weights="no/such/file.weights.h5")
    with pytest.raises(ValueError, match="width_coefficient"):
        efficientnet_encoder((SMALL, SMALL, 3), weights="imagenet", width_coefficient=WIDTH)
    source = efficientnet_encoder((SMALL, SMALL, 3), weights=None, width_coefficient=WIDTH)
    path = str(tmp_path / "encoder.weights.h5")
    source.save_weights(path)
    loaded = efficientnet_unet((SMALL, SMALL, 3), weights=path, width_coefficient=WIDTH)
    np.testing.assert_array_equal(loaded.get_layer("block4a_expand_conv").get_weights()[0],
                                  source.get_layer("block4a_expand_conv").get_weights()[0])


def test_unet_any_spatial_size():
    model = efficientnet_unet((None, None, 3), weights=None, width_coefficient=WIDTH,
                              decoder_filters=(16, 16, 8, 8, 8))
    assert _predict(model, _images(1, 96)).shape == (1, 96, 96, 1)


def test_small_unet_keras_roundtrip(small_unet, tmp_path):
    reloaded = reload_keras_file(small_unet, tmp_path / "unet.keras")
    x = _images(2)
    np.testing.assert_allclose(_predict(reloaded, x), _predict(small_unet, x),
                               rtol=1e-5, atol=1e-6)


def test_classifier_from_unet(small_unet):
    clf = efficientnet_classifier(small_unet, num_classes=3)
    assert clf.get_layer(TRUNCATE_AT).output.shape[1:3] == (SMALL // 16, SMALL // 16)  # 16 at 256
    convs = [layer for layer in clf.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[-1].name == DEEPEST_CONV and convs[-1].filters == 512
    assert clf.get_layer("zero_padding").output.shape[1:3] == (SMALL // 16 + 2,) * 2
    probs = _predict(clf, _images(2))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for name in ("stem_conv", "block5c_project_conv"):
        np.testing.assert_array_equal(clf.get_layer(name).get_weights()[0],
                                      small_unet.get_layer(name).get_weights()[0])
    # fresh layers: the classifier shares nothing with the U-Net
    assert clf.get_layer("stem_conv") is not small_unet.get_layer("stem_conv")
    assert "decoder_stage0a_conv" not in [layer.name for layer in clf.layers]


def test_classifier_new_input_shape_and_output_regularizer(small_unet):
    clf = efficientnet_classifier(small_unet, input_shape=(96, 96, 3),
                                  output_regularizer=keras.regularizers.L2(0.1))
    assert clf.input.shape == (None, 96, 96, 3)
    assert clf.get_layer(TRUNCATE_AT).output.shape[1:3] == (6, 6)
    np.testing.assert_array_equal(clf.get_layer("block3b_dwconv").get_weights()[0],
                                  small_unet.get_layer("block3b_dwconv").get_weights()[0])
    clf(_images(1, 96))
    assert len(clf.losses) == 1 and float(clf.losses[0]) > 0


def test_model_level_ensemble_saves_and_reloads(tmp_path):
    keras.utils.set_random_seed(1)
    members = [efficientnet_classifier(
        efficientnet_encoder((SMALL, SMALL, 3), weights=None, width_coefficient=WIDTH),
        name=f"clf_{i}") for i in range(3)]
    ensemble = model_level_ensemble(members, num_classes=3)
    concat = ensemble.get_layer("ensemble_concat")
    assert concat.output.shape == (None, SMALL // 16, SMALL // 16, 1536)
    conv = ensemble.get_layer(ENSEMBLE_CONV)
    assert conv.kernel_size == (1, 1) and conv.filters == 512
    trainable = {w.path.split("/")[0] for w in ensemble.trainable_weights}
    assert trainable == {ENSEMBLE_CONV, "predictions"}
    assert all(m.get_layer(DEEPEST_CONV).trainable for m in members)  # sources untouched
    np.testing.assert_array_equal(
        ensemble.get_layer("member_1").get_layer(DEEPEST_CONV).get_weights()[0],
        members[1].get_layer(DEEPEST_CONV).get_weights()[0])

    x = _images(2, seed=3)
    expected = _predict(ensemble, x)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    np.testing.assert_allclose(reload_in_fresh_process(path, x), expected, rtol=1e-5, atol=1e-6)


def test_shallow_quick_encoder_keeps_the_skips_and_truncates_at_block5b():
    """depth_coefficient 0.5 (quick runs): 10 blocks, the U-Net's skips remain, and the
    classifier is cut at block5b_add because block5c_add no longer exists."""
    from cxr_keras.models import efficientnet_classifier, efficientnet_unet

    unet = efficientnet_unet((64, 64, 3), weights=None, width_coefficient=0.25,
                             depth_coefficient=0.5, decoder_filters=(16, 8, 8, 8, 8))
    names = {layer.name for layer in unet.layers}
    assert "block5b_add" in names and "block5c_add" not in names
    assert unet.output.shape == (None, 64, 64, 1)
    clf = efficientnet_classifier(unet, 3, truncate_at="block5b_add")
    assert clf.get_layer("deepest_conv").output.shape[1:3] == (4, 4)
    with pytest.raises(ValueError):
        efficientnet_classifier(unet, 3)  # block5c_add is missing
