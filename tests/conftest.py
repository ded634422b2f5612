"""Shared test hygiene: every test module starts from a clean Keras / TensorFlow state, so that
one module's models, traced functions and global policy do not accumulate into the next (the
whole suite runs in one process)."""

import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_state():
    yield
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    gc.collect()
