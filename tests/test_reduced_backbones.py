"""Our DenseNet and EfficientNet builders (public Keras layers only) against keras.applications:
at the full configuration they are DenseNet121 / EfficientNetB0 layer for layer (names, weight
shapes, and outputs once the same weights are loaded), so the reduced networks of quick runs and
tests are those designs with fewer blocks or channels."""

import re

import keras
import numpy as np
import pytest

from cxr_keras.models import densenet, efficientnet
from cxr_keras.models._efficientnet import round_filters, round_repeats


def _same_network(ours, reference, x):
    ours_names = [layer.name for layer in ours.layers if layer.weights]
    reference_names = [layer.name for layer in reference.layers if layer.weights]
    # keras.applications numbers its unnamed Normalization layer per session
    assert [re.sub(r"^normalization_\d+$", "normalization", n)
            for n in reference_names] == ours_names
    assert [w.shape for w in ours.weights] == [w.shape for w in reference.weights]
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path
               else rng.normal(0, 0.05, w.shape) for w in reference.weights]
    reference.set_weights([w.astype("float32") for w in weights])
    ours.set_weights(reference.get_weights())
    expected = reference.predict(x, verbose=0)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_densenet_121_is_keras_densenet121():
    shape = (64, 64, 3)
    x = np.random.default_rng(1).uniform(0, 1, (2, *shape)).astype("float32")
    ours = densenet((6, 12, 24, 16), input_shape=shape)
    assert ours.count_params() == 7_037_504  # DenseNet121 without top
    _same_network(ours, keras.applications.DenseNet121(include_top=False, weights=None,
                                                       input_shape=shape), x)


@pytest.mark.parametrize("shape", [(64, 64, 3), (65, 63, 3)])
def test_efficientnet_b0_is_keras_efficientnetb0(shape):
    x = np.random.default_rng(1).uniform(0, 255, (2, *shape)).astype("float32")
    ours = efficientnet(1.0, 1.0, input_shape=shape)
    assert ours.count_params() == 4_049_571  # EfficientNetB0 without top
    _same_network(ours, keras.applications.EfficientNetB0(include_top=False, weights=None,
                                                          input_shape=shape), x)


def test_reduced_networks_keep_the_names_and_scale_as_stated():
    dense = densenet((1, 2, 2, 1), input_shape=(64, 64, 3))
    # channels: 64 +32 -> 48 +64 -> 56 +64 -> 60 +32 = 92 at 1/32 of the input
    assert dense.get_layer("relu").output.shape == (None, 2, 2, 92)
    assert {"conv3_block2_concat", "conv4_block2_concat", "pool4_conv"} <= {
        layer.name for layer in dense.layers}
    small = efficientnet(0.25, 0.5, input_shape=(64, 64, 3))
    names = {layer.name for layer in small.layers}
    # depth 0.5: stages of 1, 1, 1, 2, 2, 2, 1 blocks (ceil), so block5b exists, block5c not
    assert {"block5b_add", "block6a_expand_activation", "top_activation"} <= names
    assert "block5c_add" not in names
    assert small.output.shape[-1] == round_filters(1280, 0.25) == 320
    assert [round_repeats(r, 0.5) for r in (1, 2, 2, 3, 3, 4, 1)] == [1, 1, 1, 2, 2, 2, 1]
    # Keras' rounding: to a multiple of 8, never more than 10% below the scaled width
    assert [round_filters(c, 0.25) for c in (32, 16, 24, 40, 80, 112)] == [8, 8, 8, 16, 24, 32]
    with pytest.raises(ValueError, match="four positive"):
        densenet((1, 2, 2))
