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
    half: str = "float16"  # the compute type under mixed precision: "float16" or "bfloat16"

    @property
    def dtype_policy(self) -> str:
        """The Keras dtype policy models are built with: "mixed_float16", "mixed_bfloat16" or
        "float32"."""
        return f"mixed_{self.half}" if self.mixed_precision else "float32"

    @contextlib.contextmanager
    def precision(self):
        """Context with :attr:`dtype_policy` as the global dtype policy; the policy set before
        is put back on exit."""
        before = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.dtype_policy)
        try:
            yield self
        finally:
            keras.mixed_precision.set_global_policy(before)

    @contextlib.contextmanager
    def scope(self):
        """Context in which to build, compile and train models: :meth:`precision` and the
        strategy's scope, if any. Everything is put back on exit.

        Example:

        ```python
        runtime = configure(seed=0, mixed_precision=True)
        with runtime.scope():
            model = build_model()      # mixed_float16 layers
        # the global dtype policy is again what it was before
        ```
        """
        strategy = self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()
        with self.precision(), strategy:
            yield self

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


def auto_precision(backend: str, gpus: int) -> str | None:
    """What ``mixed_precision="auto"`` picks: ``"float16"`` with a GPU, else None (float32).

    Not bfloat16 on a CPU, though on one with native bfloat16 arithmetic (AVX512_BF16) oneDNN's
    bfloat16 kernels trained densenet121_fzlpr 1.27x and MLRFNet 1.34x faster than float32 and
    predicted 1.45-1.5x faster (``benchmarks/bench_precision.py``, ``benchmarks/README.md``):
    it moved densenet121_fzlpr's first training loss by 5% against float32, and its effect on the
    papers' final AUCs is not measured yet. Ask for it with ``mixed_precision="bfloat16"``
    (``--mixed-precision bfloat16``); ``cxr-keras export`` serves such a model in float32.

    Example:

    ```python
    auto_precision("tensorflow", gpus=1)   # "float16"
    auto_precision("tensorflow", gpus=0)   # None: float32
    ```
    """
    return "float16" if gpus > 0 else None


def configure(seed: int | None = None, deterministic: bool = False, mixed_precision="auto",
              xla="auto", multi_gpu: bool = True) -> Runtime:
    """Decide mixed precision (by default float16 on a GPU only: :func:`auto_precision`;
    ``"bfloat16"`` asks for mixed bfloat16, e.g. on a CPU with AVX512_BF16) and XLA (on by
    default on GPU and on the JAX backend, where ``jit_compile=False`` runs every op on its own,
    uncompiled: under ``--distributed`` a reduced DenseNet's step then took minutes instead of
    seconds).

    Process-wide state changes only where asked for:

    * ``seed`` given: ``keras.utils.set_random_seed(seed)`` (Python's ``random``, NumPy's global
      generator, TensorFlow's global seed and the backend's: Keras' default seed generators).
      ``None`` (the default) seeds nothing.
    * ``deterministic=True``: ``tf.config.experimental.enable_op_determinism()`` (deterministic
      TensorFlow kernels, slower on GPU), on every backend, since the ``tf.data`` input pipelines
      run on TensorFlow; JAX's CPU kernels need nothing more (on GPU JAX also needs
      ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` set before it starts). TensorFlow has no
      public switch to turn it off again.
    * The global dtype policy is **not** changed here: :meth:`Runtime.scope` (or
      :meth:`Runtime.precision`) sets ``"mixed_float16"`` (``mixed_precision`` true, or "auto"
      with a GPU), ``"mixed_bfloat16"`` (``mixed_precision="bfloat16"``) or ``"float32"`` for
      the models built inside it and puts the earlier policy back on exit. Under both mixed policies variables, the
      models' output layers and the losses stay float32.

    ``multi_gpu``: on TensorFlow with several GPUs visible, build a MirroredStrategy.
    """
    backend = keras.backend.backend()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    gpus = _gpu_count(backend)
    if deterministic:
        try:
            import tensorflow as tf
        except ImportError:  # JAX without TensorFlow: no tf.data pipeline to make deterministic
            tf = None
        if tf is not None:
            tf.config.experimental.enable_op_determinism()
    half = "float16"
    if mixed_precision == "auto":
        half = auto_precision(backend, gpus)
        mp = half is not None
        half = half or "float16"
    elif mixed_precision in ("bfloat16", "float16"):
        mp, half = True, mixed_precision
    else:
        mp = bool(mixed_precision)
    jit = (gpus > 0 or backend == "jax") if xla == "auto" else bool(xla)
    strategy = None
    if multi_gpu and gpus > 1 and backend == "tensorflow":
        from .distribute import mirrored_strategy

        strategy = mirrored_strategy()
    return Runtime(backend, gpus, mp, jit, deterministic, strategy, half)
