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

Where the processes are, read by :func:`initialize` when its arguments are not given, first
found wins:

- ours: ``CXR_COORDINATOR`` (``host:port`` of process 0, the same on every process),
  ``CXR_NUM_PROCESSES``, ``CXR_PROCESS_ID`` (this process's number, 0 .. N-1);
- Keras' own (:func:`keras.distribution.initialize`): ``KERAS_DISTRIBUTION_JOB_ADDRESSES``
  (process 0's address first; a comma-separated list of all is accepted),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``;
- neither: JAX's cluster auto-detection (Slurm, Open MPI, Kubernetes, Cloud TPU), as
  ``jax.distributed.initialize()`` with no arguments does.

``KERAS_BACKEND=jax`` is required.

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
KERAS_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
             "KERAS_DISTRIBUTION_PROCESS_ID")
_JOINED = {}  # process_id, num_processes once initialize() ran (cleared inside local())
_INFO = {}    # what initialize() returned (kept inside local())


def cluster_from_env(coordinator=None, num_processes=None, process_id=None):
    """``(coordinator, num_processes, process_id)``: the arguments where given, else our
    variables, else Keras' (the first of its job addresses is the coordinator), else None (JAX
    then auto-detects the cluster). A value that is not a number names its variable."""
    given = [coordinator, num_processes, process_id]
    for names in (ENV, KERAS_ENV):
        for i, name in enumerate(names):
            if given[i] is None and name in os.environ:
                raw = os.environ[name].strip()
                try:
                    given[i] = raw.split(",")[0].strip() if i == 0 else int(raw)
                except ValueError as e:
                    raise RuntimeError(f"{name}={raw!r} is not a whole number") from e
    return tuple(given)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str = "gloo") -> dict:
    """Join the processes and set ``keras.distribution.DataParallel`` over all their devices.
    Returns ``{"process_id", "num_processes", "devices", "local_devices"}``."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError("multi-host training runs on the JAX backend: set KERAS_BACKEND=jax "
                           f"(this process uses {keras.backend.backend()!r})")
    import jax

    coordinator, num_processes, process_id = cluster_from_env(coordinator, num_processes, process_id)
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise RuntimeError(f"process id {process_id} is not in 0..{num_processes - 1}")
    # (before initialize: asking for the devices first would start JAX single-process)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except ValueError as e:  # nothing given and no cluster JAX recognises
        raise RuntimeError(f"multi-host training: cannot tell where the processes are ({e}); set "
                           f"{', '.join(ENV)} (or {', '.join(KERAS_ENV)}) on every process") from e
    if len(jax.local_devices()) != 1:
        raise RuntimeError(
            f"process {process_id} sees {len(jax.local_devices())} devices; multi-host training "
            "here runs one process per device (e.g. CUDA_VISIBLE_DEVICES=i for process i)")
    devices = jax.devices()
    # auto_shard_dataset=False: the pipelines split the data themselves (see the module docstring)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    _JOINED.update(process_id=jax.process_index(), num_processes=jax.process_count())
    _INFO.update(process_id=jax.process_index(), num_processes=jax.process_count(),
                 devices=len(devices), local_devices=len(jax.local_devices()))
    return dict(_INFO)


def joined() -> dict | None:
    """What :func:`initialize` returned, once it ran in this process (else None)."""
    return dict(_INFO) if _INFO else None


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
