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

One process per device: a process that sees several devices is refused (on GPU hosts give each
process its own ``CUDA_VISIBLE_DEVICES``); so any batch size splits over the processes.

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
    if len(jax.local_devices()) != 1:
        raise RuntimeError(
            f"process {process_id} sees {len(jax.local_devices())} devices; multi-host training "
            "here runs one process per device (e.g. CUDA_VISIBLE_DEVICES=i for process i)")
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
    here hold this process's own weights, ``predict`` returns this process's outputs, and
    pipelines made here are not split."""
    import keras

    previous, joined = keras.distribution.distribution(), dict(_JOINED)
    keras.distribution.set_distribution(None)
    _JOINED.clear()
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
        _JOINED.update(joined)


def agree(what: str, value: int) -> None:
    """Raise unless every process has the same integer ``value`` (no-op when not distributed):
    e.g. the epoch each resumes from, which must match or the all-reduce would hang."""
    if not _JOINED:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.process_allgather(np.array(int(value)))).ravel().tolist()
    if len(set(values)) > 1:
        raise RuntimeError(f"the processes disagree on {what}: {values} (process 0 first); "
                           "remove the backups of the stage on every process to restart it")


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op when not distributed)."""
    if _JOINED:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_chief() -> bool:
    """True on process 0 (and when not distributed)."""
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0
