"""``cxr_keras.training.runtime.configure``: what its docstring promises, checked against the
libraries' own primitives (Python's / NumPy's generators re-seeded by hand, TensorFlow's
``tf.random.set_seed`` and op-determinism flag), and two seeded fits in one process that end with
bit-identical weights. Every test puts back the process-wide state that ``configure`` changes
(op determinism, dtype policy: the ``restore_runtime`` fixture of conftest.py); the dtype
policy is set only inside ``Runtime.scope()`` and put back after it."""

import random

import keras
import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

from cxr_keras.training.runtime import auto_precision, configure

from _models import run_on_jax


def test_deterministic_enables_op_determinism_and_seeds_every_generator(restore_runtime):
    import tensorflow as tf

    tf_config.disable_op_determinism()
    tf.random.set_seed(11)
    tf_expected = tf.random.uniform([4]).numpy()
    configure(5, deterministic=False, mixed_precision=False, xla=False)
    assert not tf_config.is_op_determinism_enabled()

    rt = configure(11, deterministic=True, mixed_precision=False, xla=False)
    assert tf_config.is_op_determinism_enabled()
    assert (rt.deterministic, rt.mixed_precision, rt.jit_compile) == (True, False, False)
    assert rt.backend == keras.backend.backend() and rt.replicas == 1
    # the generators are those seeded by hand with 11 (nothing drawn in between)
    assert random.random() == random.Random(11).random()
    assert np.random.random() == np.random.RandomState(11).random_sample()
    np.testing.assert_array_equal(tf.random.uniform([4]).numpy(), tf_expected)
    # Keras' default seed generator starts again from the seed
    configure(11, deterministic=True, mixed_precision=False, xla=False)
    first = keras.ops.convert_to_numpy(keras.random.uniform((4,)))
    configure(11, deterministic=True, mixed_precision=False, xla=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.random.uniform((4,))), first)
    configure(12, deterministic=True, mixed_precision=False, xla=False)
    assert not np.array_equal(keras.ops.convert_to_numpy(keras.random.uniform((4,))), first)

def test_xla_auto_compiles_on_jax_even_on_a_cpu():
    """On JAX, jit_compile=False would run each op of a train step on its own (eagerly)."""
    out = run_on_jax("from cxr_keras.training import configure\n"
                     "rt = configure(0, xla='auto')\n"
                     "print(rt.backend, rt.gpus, rt.jit_compile)\n", timeout=120)
    assert out.split()[-3:] == ["jax", "0", "True"]


def test_the_dtype_policy_is_set_inside_the_scope_only_and_put_back(restore_runtime):
    """configure leaves the global policy alone; scope() sets the runtime's, then restores."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rt = configure(mixed_precision=True, xla=False)
    assert rt.mixed_precision and rt.dtype_policy == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"   # untouched
    with rt.scope():
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert keras.layers.Dense(2).dtype_policy.name == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"   # put back
    with pytest.raises(RuntimeError), configure(mixed_precision=False).precision():
        assert keras.mixed_precision.global_policy().name == "float32"
        raise RuntimeError("put back on errors too")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    auto = configure(mixed_precision="auto", xla="auto")
    assert auto.jit_compile == (auto.gpus > 0)
    assert auto.mixed_precision == (auto_precision(auto.backend, auto.gpus) is not None)


def test_auto_is_float16_on_a_gpu_only_and_bfloat16_is_asked_for(monkeypatch, restore_runtime):
    """The selection, with the GPU count made up: cheap, no timing. Not bfloat16 by "auto" on a
    CPU, even one with AVX512_BF16: its models' ONNX exports do not load in ONNX Runtime."""
    from cxr_keras.training import runtime

    assert auto_precision("tensorflow", 1) == auto_precision("jax", 2) == "float16"
    assert auto_precision("tensorflow", 0) is None
    monkeypatch.setattr(runtime, "_gpu_count", lambda backend: 0)
    assert configure(mixed_precision="auto", xla=False).dtype_policy == "float32"
    rt = configure(mixed_precision="bfloat16", xla=False)
    assert rt.mixed_precision and rt.dtype_policy == "mixed_bfloat16"
    with rt.scope():
        assert keras.layers.Conv2D(2, 3).dtype_policy.name == "mixed_bfloat16"
    assert configure(mixed_precision=True, xla=False).dtype_policy == "mixed_float16"
    monkeypatch.setattr(runtime, "_gpu_count", lambda backend: 1)
    assert configure(mixed_precision="auto", xla=False).dtype_policy == "mixed_float16"


def test_no_seed_seeds_nothing():
    random.seed(7)
    np.random.seed(7)
    want = random.random(), np.random.random()
    random.seed(7)
    np.random.seed(7)
    configure(mixed_precision=False, xla=False)
    assert (random.random(), np.random.random()) == want


def _tiny_fit(seed):
    """A seeded run: data drawn from the global NumPy generator, an unseeded tf.data shuffle,
    default initialisers and Dropout: every one of them follows the seed given to configure."""
    import tensorflow as tf

    configure(seed, deterministic=True, mixed_precision=False, xla=False)
    x = np.random.random((32, 8, 8, 1)).astype("float32")
    y = (np.random.random((32, 3)) < 0.5).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32).batch(8)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inp)))
    h = L.Dropout(0.5)(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, L.Dense(3)(h))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=False)
    model.fit(ds, epochs=2, verbose=0)
    return model.get_weights()


def test_two_fits_with_the_same_seed_end_bit_identical(restore_runtime):
    a, b, other = _tiny_fit(3), _tiny_fit(3), _tiny_fit(4)
    assert len(a) == len(b) == len(other) > 0
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wo) for wa, wo in zip(a, other))  # the seed matters
