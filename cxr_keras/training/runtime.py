"""Runtime set-up for training: seeds, determinism, mixed precision, XLA, multi-GPU strategy.

TF-specific parts (op determinism, ``tf.distribute.MirroredStrategy``) are imported only when the
backend is TensorFlow. On the JAX backend multi-device training goes through
``keras.distribution`` instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras


@dataclass
class Runtime:
    backend: str
    gpus: int
    mixed_precision: bool
    jit_compile: bool
    deterministic: bool
    strategy: object = None  # a tf.distribute.Strategy or None

    def scope(self):
        """Context in which to build and compile models (the strategy's scope, if any)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1


def _gpu_count(backend: str) -> int:
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(1 for d in jax.devices() if d.platform == "gpu")
    return 0


def configure(seed: int = 0, deterministic: bool = False, mixed_precision="auto", xla="auto",
              multi_gpu: bool = True) -> Runtime:
    """Seed every generator; switch mixed precision on by default on GPU only, and XLA on GPU
    and on the JAX backend (where ``jit_compile=False`` runs every op on its own, uncompiled:
    under ``--distributed`` a reduced DenseNet's step then took minutes instead of seconds).

    Process-wide and not undone (call it once, at the start of a run):

    * ``keras.utils.set_random_seed(seed)``: Python's ``random``, NumPy's global generator,
      TensorFlow's global seed and the backend's (Keras' default seed generators).
    * ``deterministic=True``: ``tf.config.experimental.enable_op_determinism()`` (deterministic
      TensorFlow kernels, slower on GPU), on every backend, since the ``tf.data`` input pipelines
      run on TensorFlow; JAX's CPU kernels need nothing more (on GPU JAX also needs
      ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` set before it starts).
    * The global dtype policy is **set** either way: ``"mixed_float16"`` (``mixed_precision``
      true, or "auto" with a GPU) or ``"float32"``, replacing any policy set before.

    ``multi_gpu``: on TensorFlow with several GPUs visible, build a MirroredStrategy.
    """
    backend = keras.backend.backend()
    keras.utils.set_random_seed(seed)
    gpus = _gpu_count(backend)
    if deterministic:
        try:
            import tensorflow as tf
        except ImportError:  # JAX without TensorFlow: no tf.data pipeline to make deterministic
            tf = None
        if tf is not None:
            tf.config.experimental.enable_op_determinism()
    mp = gpus > 0 if mixed_precision == "auto" else bool(mixed_precision)
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    jit = (gpus > 0 or backend == "jax") if xla == "auto" else bool(xla)
    strategy = None
    if multi_gpu and gpus > 1 and backend == "tensorflow":
        from .distribute import mirrored_strategy

        strategy = mirrored_strategy()
    return Runtime(backend, gpus, mp, jit, deterministic, strategy)
