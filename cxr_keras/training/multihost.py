"""Multi-host data parallelism on the JAX backend (JAX-specific module): every process runs the
same script, ``jax.distributed.initialize`` joins them, and Keras' ``DataParallel`` over every
device of every process keeps one copy of the weights per device, averaging the gradients across
processes at each step.

Data: each process feeds its own part of every global batch. Our training pipelines
(:func:`cxr_keras.data.pipeline.make_dataset` with ``training=True``) do the split themselves:
every process draws the same seeded permutation of the epoch and takes every P-th row of it, in
batches of ``batch_size / P``, the same number of steps on every process (up to P - 1 rows of an
epoch are left out), so the global batch is the one a single process would have trained on.
Evaluation pipelines are not split: after training, run evaluation inside :func:`local`, where
models loaded or built are this process's own and ``predict`` works as usual.

TensorFlow's ``MultiWorkerMirroredStrategy`` is not a way there: it fails under Keras 3's ``fit``;
single-host multi-GPU on TF is :mod:`cxr_keras.training.distribute`.

Environment, read by :func:`initialize` when its arguments are not given:

- ``CXR_COORDINATOR``: ``host:port`` of process 0 (every process gives the same);
- ``CXR_NUM_PROCESSES``: how many processes;
- ``CXR_PROCESS_ID``: this process's number, 0 .. N-1;
- ``KERAS_BACKEND=jax`` (required).

On CPUs the collectives go through gloo (``jax_cpu_collectives_implementation``); on GPUs JAX uses
NCCL. Only process 0 should write run folders and reports (:func:`is_chief`). Every process must
run the same number of steps: a process whose data runs out first leaves the others waiting in
the gradient all-reduce (our pipelines see to it; other inputs must too).

``cxr-keras run fzlpr ... --distributed`` does all of this (see the README).
"""

from __future__ import annotations

import contextlib
import os

ENV = ("CXR_COORDINATOR", "CXR_NUM_PROCESSES", "CXR_PROCESS_ID")
_JOINED = {}  # process_id, num_processes once initialize() ran


def _from_env(name, value, cast=str):
    if value is not None:
        return value
    if name not in os.environ:
        raise RuntimeError(f"multi-host training needs {name} (or the argument); set "
                           f"{', '.join(ENV)} on every process")
    try:
        return cast(os.environ[name])
    except ValueError as e:
        raise RuntimeError(f"{name}={os.environ[name]!r} is not valid") from e


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str = "gloo") -> dict:
    """Join the processes and set ``keras.distribution.DataParallel`` over all their devices.
    Returns ``{"process_id", "num_processes", "devices", "local_devices"}``."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError("multi-host training runs on the JAX backend: set KERAS_BACKEND=jax "
                           f"(this process uses {keras.backend.backend()!r})")
    import jax

    coordinator = _from_env("CXR_COORDINATOR", coordinator)
    num_processes = _from_env("CXR_NUM_PROCESSES", num_processes, int)
    process_id = _from_env("CXR_PROCESS_ID", process_id, int)
    if not 0 <= process_id < num_processes:
        raise RuntimeError(f"process id {process_id} is not in 0..{num_processes - 1}")
    # (before initialize: asking for the devices first would start JAX single-process)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    devices = jax.devices()
    # auto_shard_dataset=False: the pipelines split the data themselves (see the module docstring)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    _JOINED.update(process_id=jax.process_index(), num_processes=jax.process_count())
    return {"process_id": jax.process_index(), "num_processes": jax.process_count(),
            "devices": len(devices), "local_devices": len(jax.local_devices())}


def data_shard() -> tuple:
    """(this process's index, number of processes) for splitting training data; (0, 1) when
    not distributed."""
    if not _JOINED:
        return 0, 1
    return _JOINED["process_id"], _JOINED["num_processes"]


@contextlib.contextmanager
def local():
    """No distribution inside (evaluation after multi-host training): models built or loaded
    here hold this process's own weights, and ``predict`` returns this process's outputs."""
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def is_chief() -> bool:
    """True on process 0 (and when not distributed)."""
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0
