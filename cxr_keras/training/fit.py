"""Staged, resumable fitting shared by every paper.

:func:`fit_stage` trains one stage (e.g. fzlpr's frozen-base stage, then the full network) with:

- best checkpoint by a monitored metric, kept across stages and across restarts
  (``checkpoints/best.keras`` + ``best.json``);
- an atomic per-epoch backup (:class:`EpochBackup`), so a killed run (even SIGKILL while the
  backup is being written) resumes from its last finished epoch; dropout seeds and the data
  order are functions of the epoch (:class:`EpochReseed`,
  :class:`~cxr_keras.data.pipeline.EpochCallback`), so the resumed run ends with the same weights;
- CSV logs (and TensorBoard logs when asked);
- a clear stop when the loss becomes NaN (:class:`TrainingDiverged`), the best checkpoint intact;
- a stage marker (``checkpoints/<stage>.weights.h5``): a finished stage is not trained again.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np

from ..integrity import SUFFIX, checksummed_path, verify
from ..io import DataError, write_json


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.where = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self.epoch, batch, float(loss))
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class EpochReseed(keras.callbacks.Callback):
    """Set every SeedGenerator (dropout, noise layers) to a function of (seed, epoch)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        for i, sg in enumerate(_seed_generators(self.model)):
            sg.state.assign(np.array([self.seed + i, epoch], dtype=sg.state.dtype))


def _seed_generators(model):
    seen, out = set(), []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for sg in getattr(layer, "_seed_generators", []):
            if id(sg) not in seen:
                seen.add(id(sg))
                out.append(sg)
    return out


class EpochBackup(keras.callbacks.Callback):
    """Back up the weights and optimizer state at every epoch end, crash-safe, and restore them at
    the start of ``fit``.

    Keras' ``BackupAndRestore`` writes ``latest.weights.h5`` in place and its epoch number in a
    second file: a SIGKILL during the write leaves a corrupt file, one between the two writes
    pairs new weights with the old epoch. Here each epoch's weights go to their own file
    (written to a temporary name, then renamed), and ``state.json`` (also renamed into place)
    names the file and the epoch; older files are removed only after that. Whenever the process
    dies, ``state.json`` names a complete file of the epoch it says. :func:`fit_stage` removes the
    folder once the stage's marker is written."""

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)
        self.state_path = self.directory / "state.json"

    def on_train_begin(self, logs=None):
        # fit starts at model._initial_epoch when set (what BackupAndRestore sets too). It
        # outlives fit: cleared here and at the end, or the next stage would skip epochs.
        self.model._initial_epoch = None
        for stale in self.directory.glob(".epoch-*"):  # temporaries of a killed write
            stale.unlink(missing_ok=True)
        state = self._good_backup()
        from .multihost import agree

        agree("the epoch to resume from", state["epoch"] if state else 0)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.directory / state["weights"])
        self.model._initial_epoch = int(state["epoch"])

    def _good_backup(self):
        """The newest backup whose file matches its checksum (the last one, else the one before);
        None to start the stage afresh."""
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else None
        for entry in [state, (state or {}).get("previous")]:
            if not entry:
                continue
            try:
                verify(self.directory / entry["weights"])
                return entry
            except DataError as e:
                print(f"warning: backup of epoch {entry['epoch']} refused: {e}", flush=True)
        if state is not None:
            print(f"warning: no usable backup in {self.directory}; the stage starts again", flush=True)
        return None

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return  # a diverged epoch is not a state to resume from
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        with checksummed_path(self.directory / name, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        last = json.loads(self.state_path.read_text()) if self.state_path.exists() else None
        previous = {k: last[k] for k in ("epoch", "weights")} if last else None
        write_json(self.state_path, {"epoch": epoch + 1, "weights": name, "previous": previous})
        keep = {name, previous["weights"]} if previous else {name}  # the one before: a fallback
        for old in self.directory.glob("epoch-*.weights.h5*"):
            if old.name.removesuffix(SUFFIX) not in keep:
                old.unlink()


class BestCheckpoint(keras.callbacks.Callback):
    """Save the whole model (``.keras``) when ``monitor`` improves on the best seen in this run,
    remembering the best in ``best.json`` so that later stages and restarts compare against it."""

    def __init__(self, directory, monitor="val_auc", mode="max", stage=""):
        super().__init__()
        self.directory = Path(directory)
        self.monitor, self.mode, self.stage = monitor, mode, stage
        self.state_path = self.directory / "best.json"

    def _best(self):
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"monitored metric {self.monitor!r} not in logs {sorted(logs or {})}")
        value = float(value)
        best = self._best()
        better = best is None or (value > best["value"] if self.mode == "max" else value < best["value"])
        if better and math.isfinite(value):
            with checksummed_path(self.directory / "best.keras") as tmp:
                self.model.save(tmp)
            write_json(self.state_path, {"value": value, "monitor": self.monitor, "mode": self.mode,
                                         "stage": self.stage, "epoch": int(epoch)})


def read_history(path) -> dict:
    """Read a CSVLogger file into {metric: [values]} (the last value wins for a repeated epoch)."""
    path = Path(path)
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    hist = {}
    for epoch in sorted(rows):
        for k, v in rows[epoch].items():  # CSVLogger writes "NA" for a metric an epoch lacks
            hist.setdefault(k, []).append(float(v) if v not in ("", "NA", None) else float("nan"))
    return {k: v for k, v in hist.items() if not all(math.isnan(x) for x in v)}


def compile_built(model, optimizer, **compile_kwargs):
    """``model.compile`` and build the optimizer's slots now: built lazily, inside the first
    traced train step, they make TensorFlow trace the step twice (measured: the first fit of the
    quick U-Net 11.7 s -> 6.1 s CPU)."""
    if compile_kwargs.get("metrics") == []:  # Keras 3.13 refuses [] for a model with dict outputs
        compile_kwargs["metrics"] = None
    model.compile(optimizer=optimizer, **compile_kwargs)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


def fit_stage(model, train_ds, val_ds, run, stage: str, *, epochs: int, optimizer, loss,
              metrics=(), monitor="val_auc", mode="max", seed: int = 0, jit_compile=False,
              steps_per_epoch=None, callbacks=(), tensorboard: bool = False, verbose="auto") -> dict:
    """Compile and fit one stage; returns its history. Skips a stage already finished."""
    from ..data.pipeline import EpochCallback

    marker = run.checkpoints / f"{stage}.weights.h5"
    backup = run.checkpoints / "backup" / stage
    if marker.exists():
        shutil.rmtree(backup, ignore_errors=True)  # left by a kill between marker and clean-up
        model.load_weights(verify(marker))
        return read_history(run.file("logs", f"history_{stage}.csv"))
    compile_built(model, optimizer, loss=loss, metrics=list(metrics), jit_compile=jit_compile)
    nan_stop = StopOnNaN()
    cbs = [EpochCallback(train_ds), EpochReseed(seed), nan_stop,
           BestCheckpoint(run.checkpoints, monitor, mode, stage),
           keras.callbacks.CSVLogger(str(run.file("logs", f"history_{stage}.csv")), append=True),
           *callbacks,
           # last: the backup is written only after everything above ran for the epoch
           EpochBackup(backup)]
    if tensorboard:
        try:
            import tensorboard as _tb  # noqa: F401  (tf.summary needs the package at run time)
        except ImportError as e:
            raise RuntimeError("TensorBoard logs were asked for but the tensorboard package is "
                               "not installed: pip install tensorboard") from e
        cbs.insert(0, keras.callbacks.TensorBoard(str(run.file("logs", "tensorboard", stage))))
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs,
              steps_per_epoch=steps_per_epoch, verbose=verbose)
    if nan_stop.where is not None:
        epoch, batch, value = nan_stop.where
        raise TrainingDiverged(
            f"stage {stage!r}: the loss became {value} at epoch {epoch + 1}, batch {batch + 1}; "
            f"training stopped. The best checkpoint so far is {run.checkpoints / 'best.keras'} "
            "(if any). Lower the learning rate or check the inputs for NaN.")
    with checksummed_path(marker, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    shutil.rmtree(backup, ignore_errors=True)
    return read_history(run.file("logs", f"history_{stage}.csv"))
