"""Shared-cluster conditions: one writer per run folder and cache (real concurrent processes),
durable writes (flush before the rename that publishes, the folder after), checkpoints checked
against their checksum before use."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from cxr_keras.data.cache import build_cache
from cxr_keras.integrity import checksummed_path, sidecar, verify
from cxr_keras.io import DataError
from cxr_keras.locking import FolderLock, FolderLocked
from cxr_keras.training import RunFolder
from cxr_keras.training.fit import EpochBackup, fit_stage

HOLD = """
import sys, time
from cxr_keras.locking import FolderLock
with FolderLock(sys.argv[1], "run folder", wait=sys.argv[2] == "wait"):
    print("locked", time.time(), flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(folder, wait=False, seconds=120):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "wait" if wait else "no", str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    return p


def _wait_for_line(p, want="locked", timeout=120):
    t0 = time.perf_counter()
    line = p.stdout.readline()
    while want not in line:
        assert p.poll() is None and time.perf_counter() - t0 < timeout, f"no {want!r} from the holder"
        line = p.stdout.readline()
    return time.perf_counter()


def test_one_writer_refused_waits_and_takes_over_a_killed_holder(tmp_path):
    folder = tmp_path / "runs" / "fzlpr-abc"
    first = _holder(folder)
    try:
        _wait_for_line(first)
        with pytest.raises(FolderLocked) as e:   # refused at once, the holder named
            with FolderLock(folder, "run folder"):
                pass
        msg = str(e.value)
        assert str(folder) in msg and f"process {first.pid} on {socket.gethostname()}" in msg
        assert "--wait" in msg
        second = _holder(folder, wait=True, seconds=0)      # waits ...
        assert f"waiting for process {first.pid}" in second.stdout.readline()
        time.sleep(0.5)
        assert second.poll() is None
        first.send_signal(signal.SIGKILL)                   # ... and takes over from a killed holder
        killed = time.time()
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0
        got = float(out.split("locked", 1)[1].split()[0])
        print(f"lock takeover after SIGKILL: {got - killed:.3f} s")
    finally:
        first.kill()
    with FolderLock(folder), FolderLock(folder):  # free again; nested in one process
        pass


def test_a_run_folder_and_a_cache_being_written_refuse_a_second_process(tmp_path):
    from cxr_keras.recipes import lifecycle

    cfg = {"x": 1}
    path = RunFolder.path_for(tmp_path, "demo", cfg)
    holder = _holder(path)
    cache = tmp_path / "cache"
    cache_holder = _holder(cache)
    try:
        _wait_for_line(holder)
        _wait_for_line(cache_holder)
        never = pytest.fail
        with pytest.raises(FolderLocked, match=f"run folder {path}"):
            lifecycle.execute("demo", None, lifecycle.options(tmp_path), prepare=never, train=never,
                              evaluate=never, config=cfg)
        table = pd.DataFrame({"path": [str(tmp_path / "a.png")], "split": ["train"]})
        with pytest.raises(FolderLocked, match=f"cache {cache}"):
            build_cache(table, cache, size=8, progress=False)
    finally:
        holder.kill()
        cache_holder.kill()


def _recording(monkeypatch):
    """Record fsync (of which file) and rename calls, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _published_durably(events, dest):
    """dest was renamed into place after its temporary file was flushed, and its folder flushed after."""
    dest = str(Path(dest).resolve())
    i = max(k for k, e in enumerate(events) if e[0] == "replace" and e[2] == dest)
    tmp = events[i][1]
    flushed_before = any(e == ("fsync", tmp) for e in events[:i])
    folder_after = any(e == ("fsync", str(Path(dest).parent)) for e in events[i + 1:])
    return flushed_before and folder_after


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to name the flushed files")
def test_writes_are_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = _recording(monkeypatch)
    run = RunFolder(tmp_path / "run")
    run.update_metrics(a=1)
    run.save_predictions("test", y_true=np.zeros(3))
    images = tmp_path / "img"
    images.mkdir()
    from cxr_keras.data.images import write_image

    for i in range(3):
        write_image(images / f"{i}.png", np.full((8, 8), 40 * i, np.uint8))
    table = pd.DataFrame({"path": [str(images / f"{i}.png") for i in range(3)], "split": "train"})
    build_cache(table, tmp_path / "cache", size=8, shard_size=2, workers=1, progress=False)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.ones((8, 4), np.float32), np.ones((8, 1), np.float32))).batch(4)
    fit_stage(model, ds, ds, run, "s", epochs=1, optimizer="sgd", loss="mse", monitor="val_loss",
              mode="min", verbose=0)
    for dest in [run.file("metrics.json"), run.file("predictions", "test.npz"),
                 tmp_path / "cache" / "index.csv", tmp_path / "cache" / "cache.json",
                 run.checkpoints / "best.keras", run.checkpoints / "s.weights.h5",
                 sidecar(run.checkpoints / "best.keras")]:
        assert _published_durably(events, dest), dest
    shards = [e[2] for e in events if e[0] == "replace" and "/shards/" in e[2]]
    assert len(shards) >= 2 and all(_published_durably(events, s) for s in shards)
    backups = [e[2] for e in events if e[0] == "replace" and "/backup/" in e[2]]
    assert backups and all(_published_durably(events, b) for b in backups)


def test_checksums_refuse_changed_files_and_resume_falls_back(tmp_path):
    f = tmp_path / "w.bin"
    with checksummed_path(f) as tmp:
        tmp.write_bytes(b"weights" * 100)
    assert verify(f) == f
    f.write_bytes(b"weights" * 50)                       # truncated after it was written
    with pytest.raises(DataError, match="does not match its checksum"):
        verify(f)
    sidecar(f).unlink()                                  # no sidecar: renamed complete, trusted
    assert verify(f) == f

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    backup = EpochBackup(tmp_path / "backup")
    backup.set_model(model)
    model.layers[0].kernel.assign(np.full((2, 1), 1.0))
    backup.on_epoch_end(0, {"loss": 1.0})
    model.layers[0].kernel.assign(np.full((2, 1), 2.0))
    backup.on_epoch_end(1, {"loss": 1.0})
    model.layers[0].kernel.assign(np.full((2, 1), 3.0))
    backup.on_epoch_end(2, {"loss": 1.0})
    assert sorted(p.name for p in (tmp_path / "backup").glob("epoch-*.h5")) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5"]  # the last and the one before
    last = tmp_path / "backup" / "epoch-0003.weights.h5"
    last.write_bytes(last.read_bytes()[:100])            # the last backup damaged
    model.layers[0].kernel.assign(np.zeros((2, 1)))
    backup.on_train_begin()
    assert model._initial_epoch == 2                     # resumed from the one before
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel), np.full((2, 1), 2.0))

    from cxr_keras.export import load_keras_model

    best = tmp_path / "best.keras"
    with checksummed_path(best) as tmp:
        model.save(tmp)
    load_keras_model(best)
    best.write_bytes(best.read_bytes()[:-10])
    with pytest.raises(DataError, match="does not match its checksum"):
        load_keras_model(best)


def test_make_dataset_maps_shards_instead_of_reading_them(tmp_path, monkeypatch):
    """A pipeline over a cache opens each shard as a read-only memory map (pages read as rows are
    used), never whole into memory: a 100k-row cache costs what its batches touch
    (benchmarks/bench_load.py measures it at full size)."""
    import cxr_keras.data.cache as cache_module
    from cxr_keras.data.cache import Cache
    from cxr_keras.data.images import write_image
    from cxr_keras.data.pipeline import make_dataset

    (tmp_path / "img").mkdir()
    for i in range(40):
        write_image(tmp_path / "img" / f"{i}.png", np.full((8, 8), i, np.uint8))
    table = pd.DataFrame({"path": [str(tmp_path / "img" / f"{i}.png") for i in range(40)], "split": "train"})
    build_cache(table, tmp_path / "cache", size=8, shard_size=4, workers=1, progress=False)
    loads = []
    real_load = np.load

    def load(f, *args, **kwargs):
        loads.append((str(f), kwargs.get("mmap_mode")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "load", load)
    ds = make_dataset(Cache(tmp_path / "cache"), "train", training=True, batch_size=4, normalization="none",
                      target="none")
    x = next(iter(ds))
    shards = [mode for f, mode in loads if "/shards/" in f]
    assert x.shape[0] == 4 and shards and set(shards) == {"r"}
