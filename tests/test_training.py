"""The shared training layer: exact resumption after a kill, NaN stop, best checkpoint, and a
learnability check of the phantom data (a small CNN learns the easy findings)."""

import json

import keras
import numpy as np
import pytest

from cxr_keras.data import load_table, write_phantom
from cxr_keras.data.cache import Cache, build_cache
from cxr_keras.data.pipeline import make_dataset
from cxr_keras.evaluation.metrics import per_class_auc
from cxr_keras.training import RunFolder, TrainingDiverged, configure, fit_stage

EASY = ["Atelectasis", "Effusion", "Mass", "Pneumothorax", "Emphysema"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    write_phantom("nih", root, n=400, size=96, seed=1, workers=1, progress=False)
    table = load_table("nih", root, val_fraction=0.2)
    return Cache(build_cache(table, root / "cache", size=64, workers=1, progress=False))


def small_cnn(dropout=0.3):
    L = keras.layers
    inp = keras.Input((None, None, 1))
    x = inp
    for f in (16, 32, 64, 64):
        x = L.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization(momentum=0.9)(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.Dropout(dropout)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Dense(14)(x))


def datasets(cache, batch=32):
    kw = dict(batch_size=batch, normalization="unit", channels=1, seed=0)
    return (make_dataset(cache, "train", preset="fzlpr", training=True, **kw),
            make_dataset(cache, "val", preset="fzlpr", training=False, **kw))


def stage(model, cache, run, epochs, callbacks=()):
    train, val = datasets(cache)
    return fit_stage(model, train, val, run, "s1", epochs=epochs, optimizer=keras.optimizers.Adam(1e-3),
                     loss=keras.losses.BinaryCrossentropy(from_logits=True), monitor="val_loss",
                     mode="min", seed=0, callbacks=callbacks, verbose=0)


class Kill(keras.callbacks.Callback):
    """Simulates the process dying at the end of an epoch (after the backup was written)."""

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("killed")


def test_killed_run_resumes_to_identical_weights(cache, tmp_path, restore_runtime):
    configure(0, deterministic=True, mixed_precision=False, xla=False)  # asked for, not assumed
    ref_model = small_cnn()
    init = ref_model.get_weights()
    stage(ref_model, cache, RunFolder(tmp_path / "ref"), epochs=3)

    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.set_weights(init)
    run = RunFolder(tmp_path / "killed")
    # Kill is placed before EpochBackup in the list, so epoch 0's backup exists and
    # epoch 1 ends without one: the resumed run repeats epoch 1.
    with pytest.raises(KeyboardInterrupt):
        stage(model, cache, run, epochs=3, callbacks=[Kill(at_epoch=1)])
    assert (run.checkpoints / "backup" / "s1").exists()
    keras.utils.set_random_seed(0)
    fresh = small_cnn()  # a new process would rebuild the model from scratch
    fresh.set_weights(init)
    stage(fresh, cache, run, epochs=3)
    for a, b in zip(ref_model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the stage marker makes a finished stage a no-op
    again = small_cnn()
    stage(again, cache, run, epochs=3)
    for a, b in zip(fresh.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_stage_after_a_resumed_stage_trains_all_its_epochs(cache, tmp_path):
    """The resumed epoch is not carried into the next stage (Keras keeps it on the model)."""
    run = RunFolder(tmp_path / "two")
    model = small_cnn()
    train, val = datasets(cache)
    kw = dict(optimizer=keras.optimizers.Adam(1e-3), monitor="val_loss", mode="min", verbose=0,
              loss=keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(KeyboardInterrupt):
        fit_stage(model, train, val, run, "a", epochs=3, callbacks=[Kill(at_epoch=1)], **kw)
    fit_stage(model, train, val, run, "a", epochs=3, **kw)               # resumes at epoch 2
    fit_stage(model, train, val, run, "b", epochs=3, **kw)
    with open(run.file("logs", "history_a.csv")) as f:
        assert [int(r.split(",")[0]) for r in f.readlines()[1:]] == [0, 1, 1, 2]
    with open(run.file("logs", "history_b.csv")) as f:
        assert [int(r.split(",")[0]) for r in f.readlines()[1:]] == [0, 1, 2]
    assert not (run.checkpoints / "backup" / "a").exists()


def test_nan_loss_stops_clearly_and_keeps_best_checkpoint(cache, tmp_path):
    run = RunFolder(tmp_path / "nan")
    model = small_cnn()
    train, val = datasets(cache)
    fit_stage(model, train, val, run, "ok", epochs=1, optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.BinaryCrossentropy(from_logits=True), monitor="val_loss",
              mode="min", verbose=0)
    best = json.loads((run.checkpoints / "best.json").read_text())
    before = (run.checkpoints / "best.keras").read_bytes()
    with pytest.raises(TrainingDiverged, match="NaN|nan"):
        fit_stage(model, train, val, run, "boom", epochs=2,
                  optimizer=keras.optimizers.SGD(1e30),  # diverges within a few steps
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), monitor="val_loss",
                  mode="min", verbose=0)
    assert (run.checkpoints / "best.keras").read_bytes() == before
    assert json.loads((run.checkpoints / "best.json").read_text()) == best
    assert not (run.checkpoints / "boom.weights.h5").exists()
    reloaded = keras.saving.load_model(run.checkpoints / "best.keras", safe_mode=True)
    assert all(np.isfinite(w).all() for w in reloaded.get_weights())


def test_small_cnn_learns_easy_phantom_findings(cache):
    keras.utils.set_random_seed(0)
    model = small_cnn(dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    kw = dict(batch_size=32, normalization="unit", channels=1, seed=0)
    model.fit(make_dataset(cache, "train", preset="none", training=True, **kw), epochs=10, verbose=0)
    rows = cache.rows(None)
    held_out = (rows["split"] != "train").to_numpy()
    scores = model.predict(make_dataset(cache, None, **kw), verbose=0)[held_out]
    targets = cache.targets(rows)[held_out]
    auc = per_class_auc(targets, scores, cache.labels)
    easy = np.nanmean([auc[k] for k in EASY])
    # baseline: the same scores against label rows shuffled across the held-out images
    from _baselines import auc_permutation_null, null_summary, permutation_p

    cols = [cache.labels.index(k) for k in EASY]
    null = auc_permutation_null(targets[:, cols], scores[:, cols], n=200, seed=0)
    assert easy > np.percentile(null, 99) and permutation_p(easy, null) < 0.01, (
        f"mean AUC on the easy findings: {null_summary(easy, null)}; {auc}")
