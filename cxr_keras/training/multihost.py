"""Multi-host data parallelism on the JAX backend (JAX-specific module): every process runs the
same script, ``jax.distributed.initialize`` joins them, and Keras' ``DataParallel`` over every
device of every process keeps one copy of the weights per device, averaging the gradients across
processes at each step. ``model.fit`` takes a tf.data pipeline as usual: Keras shards it across
the processes (each reads its own part of every global batch).

TensorFlow's ``MultiWorkerMirroredStrategy`` is not a way there: it fails under Keras 3's ``fit``;
single-host multi-GPU on TF is :mod:`cxr_keras.training.distribute`.

Environment, read by :func:`initialize` when its arguments are not given:

- ``CXR_COORDINATOR``: ``host:port`` of process 0 (every process gives the same);
- ``CXR_NUM_PROCESSES``: how many processes;
- ``CXR_PROCESS_ID``: this process's number, 0 .. N-1;
- ``KERAS_BACKEND=jax`` (required).

On CPUs the collectives go through gloo (``jax_cpu_collectives_implementation``); on GPUs JAX uses
NCCL. Only process 0 should write run folders and reports (:func:`is_chief`). Every process must
run the same number of steps (pass ``steps_per_epoch``): a process whose shard of the data runs
out first leaves the others waiting in the gradient all-reduce.
"""

from __future__ import annotations

import os

ENV = ("CXR_COORDINATOR", "CXR_NUM_PROCESSES", "CXR_PROCESS_ID")


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
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return {"process_id": jax.process_index(), "num_processes": jax.process_count(),
            "devices": len(devices), "local_devices": len(jax.local_devices())}


def is_chief() -> bool:
    """True on process 0 (and when not distributed)."""
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0
