"""Fault injection: real SIGKILLs during training and during ``prepare`` (then resume), a full
disk while writing predictions. The other faults of the list have their tests beside the code:
a corrupted cache shard found by its checksum (test_cache), NaN loss (test_training), a Lambda
layer refused in safe mode (test_export)."""

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from cxr_keras.data import load_table, write_phantom
from cxr_keras.data.cache import Cache, build_cache
from cxr_keras.io import DataError
from cxr_keras.training import RunFolder

TRAIN = r"""
import os, signal, sys
import keras, numpy as np
from cxr_keras.data.cache import Cache
from cxr_keras.data.pipeline import make_dataset
from cxr_keras.training import RunFolder, configure, fit_stage

cache, run_dir, kill = Cache(sys.argv[1]), sys.argv[2], sys.argv[3]
configure(0, deterministic=True, mixed_precision=False, xla=False)  # bit-equality across processes
L = keras.layers
inp = keras.Input((None, None, 1))
x = inp
for f in (8, 16):
    x = L.MaxPooling2D()(L.ReLU()(L.BatchNormalization()(L.Conv2D(f, 3, padding="same")(x))))
x = L.Dropout(0.3)(L.GlobalAveragePooling2D()(x))
model = keras.Model(inp, L.Dense(14)(x))
kw = dict(preset="fzlpr", batch_size=16, normalization="unit", channels=1, seed=0)
train = make_dataset(cache, "train", training=True, **kw)
val = make_dataset(cache, "val", **kw)

class KillAtBatch(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = []
if kill.startswith("batch:"):                       # die in the middle of an epoch
    callbacks.append(KillAtBatch(*map(int, kill.split(":")[1:])))
elif kill.startswith("backup:"):                    # die half-way through writing a backup
    target, save = f"epoch-{int(kill.split(':')[1]):04d}", model.save_weights
    def save_weights(path, *a, **k):
        save(path, *a, **k)
        if target in str(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    model.save_weights = save_weights
fit_stage(model, train, val, RunFolder(run_dir), "s", epochs=4, optimizer=keras.optimizers.Adam(3e-3),
          loss=keras.losses.BinaryCrossentropy(from_logits=True), monitor="val_loss", mode="min",
          seed=0, callbacks=callbacks, verbose=0)
np.savez(os.path.join(run_dir, "final.npz"), *model.get_weights())
"""


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_phantom("nih", root / "nih", n=200, size=256, seed=3, workers=1, progress=False)
    return root / "nih"


def _start(code, *args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, expect=0):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, (proc.returncode, err[-3000:])
    return out


def _weights(path):
    with np.load(path) as z:
        return [z[k] for k in z.files]


def test_sigkill_during_training_then_resume_gives_the_uninterrupted_weights(nih, tmp_path):
    table = load_table("nih", nih, val_fraction=0.2)
    cache = build_cache(table, tmp_path / "cache", size=32, workers=1, progress=False)
    ref, run = tmp_path / "ref", tmp_path / "killed"
    backup = run / "checkpoints" / "backup" / "s"
    reference = _start(TRAIN, cache, ref, "none")    # alongside the first killed run
    _finish(_start(TRAIN, cache, run, "batch:2:1"), expect=-signal.SIGKILL)
    assert json.loads((backup / "state.json").read_text())["epoch"] == 2
    # resumed at epoch 3 (index 2), killed while writing that epoch's backup
    _finish(_start(TRAIN, cache, run, "backup:3"), expect=-signal.SIGKILL)
    state = json.loads((backup / "state.json").read_text())  # (and the backup before, a fallback)
    assert (state["epoch"], state["weights"]) == (2, "epoch-0002.weights.h5")
    assert [p.name for p in backup.glob(".epoch-0003*")], "the half-written backup is gone?"
    _finish(_start(TRAIN, cache, run, "none"))
    _finish(reference)
    want, got = _weights(ref / "final.npz"), _weights(run / "final.npz")
    assert len(want) == len(got) > 0
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert not backup.exists() and (run / "checkpoints" / "s.weights.h5").exists()
    # it resumed (a silent restart from scratch would also end with these weights)
    with open(run / "logs" / "history_s.csv") as f:
        epochs = [int(line.split(",")[0]) for line in f.readlines()[1:]]
    assert epochs == [0, 1, 2, 2, 3]


PREPARE = r"""
import os, signal, sys
import numpy as np
from cxr_keras.cli import main
save, calls = np.save, []
def save_then_die(path, arr, *a, **k):           # the 4th shard dies half written
    calls.append(path)
    if len(calls) == 4:
        save(path, arr[: len(arr) // 2], *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    save(path, arr, *a, **k)
np.save = save_then_die
main(["prepare", "nih", "--root", sys.argv[1], "--out", sys.argv[2], "--size", "32",
      "--shard-size", "16", "--workers", "1"])
"""


def test_sigkill_during_prepare_keeps_finished_shards_and_resumes(nih, tmp_path):
    out = tmp_path / "cache"
    _finish(_start(PREPARE, nih, out), expect=-signal.SIGKILL)
    shards = out / "shards"
    markers = sorted(p.name for p in shards.glob("shard-*.json"))
    assert markers == ["shard-00000.json", "shard-00001.json", "shard-00002.json"]
    assert [p.name for p in shards.glob(".shard-00003*")], "no half-written temporary?"
    assert not (shards / "shard-00003.images.npy").exists()
    with pytest.raises(DataError, match="prepare` again to resume"):
        Cache(out)
    finished = {m: (shards / m.replace(".json", ".images.npy")).stat().st_mtime_ns for m in markers}

    from cxr_keras.cli import main
    assert main(["prepare", "nih", "--root", str(nih), "--out", str(out), "--size", "32",
                 "--shard-size", "16", "--workers", "1"]) in (0, None)
    cache = Cache(out, verify=True)                  # every checksum matches
    assert "reused: 3" in (out / "report.txt").read_text()
    assert {m: (shards / m.replace(".json", ".images.npy")).stat().st_mtime_ns
            for m in markers} == finished             # the finished shards were kept as they were
    assert not list(shards.glob(".shard-*"))
    clean = Cache(build_cache(load_table("nih", nih), tmp_path / "clean", size=32, shard_size=16,
                              workers=1, progress=False))
    rows = clean.rows()
    np.testing.assert_array_equal(cache.load(rows)[0], clean.load(rows)[0])


def _file_size_limit(nbytes):
    """Lower this process's file size limit (what a full disk looks like to a writer)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))

    def restore():
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    return restore


def test_disk_full_while_writing_predictions_leaves_no_partial_file(tmp_path):
    run = RunFolder(tmp_path / "run")
    small = np.arange(12, dtype=np.float32).reshape(4, 3)
    dest = run.save_predictions("test", scores=small)
    before = dest.read_bytes()
    big = np.random.default_rng(0).random((400, 1000)).astype(np.float32)  # ~1.5 MB, incompressible
    restore = _file_size_limit(256 * 1024)
    try:
        with pytest.raises(OSError, match="test.npz") as err:
            run.save_predictions("test", scores=big)
        with pytest.raises(OSError, match="val.npz"):
            run.save_predictions("val", scores=big)
    finally:
        restore()
    assert "nothing was written there" in str(err.value)
    assert dest.read_bytes() == before                      # the old file is untouched
    assert sorted(p.name for p in dest.parent.iterdir()) == ["test.npz"]  # no temporaries, no val
    np.testing.assert_array_equal(run.load_predictions("test")["scores"], small)
