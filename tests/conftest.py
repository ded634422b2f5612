"""Shared test hygiene: every test module starts from a clean Keras / TensorFlow state, so that
one module's models, traced functions and global policy do not accumulate into the next (the
whole suite runs in one process)."""

import gc
import os

import pytest

# TensorFlow 2.21's oneDNN CPU kernels corrupt the heap when training our reduced test networks
# (4-8 channels) on a batch of odd size (a short last batch): "corrupted double-linked list",
# segfaults or aborts later, at random places of the suite. Measured: a 4-8-channel ResNet-18
# crashed 4 of 5 fits of 25 images in batches of 8, none with oneDNN off or at full width. Set
# before TensorFlow is first imported (subprocesses inherit it).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_state():
    yield
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    gc.collect()
