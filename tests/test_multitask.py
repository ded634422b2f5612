"""mtpret multitask continual learning: reshuffled orders, the cyclic schedule per visit, L2-SP
holding the shared weights, two tasks learnt on one backbone (TF and JAX). A detection task in
the rounds: test_mtpret_run."""

import importlib.util

import keras
import numpy as np
import pytest

from cxr_keras.training.multitask import Task, continual_learning, task_order

from _baselines import auc_permutation_null, mean_auc, null_summary, permutation_p
from _models import last_json, run_on_jax  # tests/ is on sys.path under pytest

HAS_JAX = importlib.util.find_spec("jax") is not None


def test_task_order_reshuffles_every_round_with_a_seed():
    a = task_order(["a", "b", "c", "d"], 5, seed=3)
    assert a == task_order(["a", "b", "c", "d"], 5, seed=3)
    assert all(sorted(o) == ["a", "b", "c", "d"] for o in a) and len({tuple(o) for o in a}) > 1
    assert task_order(["a", "b"], 3, seed=0, reshuffle=False) == [["a", "b"]] * 3


def _tasks(seed=0, n=256, n_train=192):
    """Two binary tasks on 32 px noise images: bright left half (task 'left'), bright top
    half (task 'top')."""
    import tensorflow as tf

    from cxr_keras.models.backbones import multiscale_backbone
    from cxr_keras.models.task_heads import task_model

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    left, top = rng.random(n) < 0.5, rng.random(n) < 0.5
    x[left, :, :16] += 0.7
    x[top, :16] += 0.7
    keras.utils.set_random_seed(seed)
    backbone = multiscale_backbone("resnet18", input_shape=(32, 32, 3), widths=(8, 16, 16, 16))
    tasks, held_out = [], {}
    for name, y in (("left", left), ("top", top)):
        y = y.astype("float32")[:, None]
        ds = tf.data.Dataset.from_tensor_slices((x[:n_train], y[:n_train])).shuffle(
            n_train, seed=seed).batch(32)
        tasks.append(Task(name, task_model(backbone, "classification", 1, name), ds,
                          keras.losses.BinaryCrossentropy(from_logits=True)))
        held_out[name] = (x[n_train:], y[n_train:, 0])
    return backbone, tasks, held_out


def test_two_tasks_learnt_on_one_backbone_with_the_cyclic_schedule():
    backbone, tasks, held = _tasks()
    records = continual_learning(backbone, tasks, rounds=2, epochs=2, max_lr=3e-3, min_lr=1e-5,
                                 seed=0)
    assert [r["round"] for r in records] == [1, 1, 2, 2]
    assert all(r["lr_first_last"][0] == pytest.approx(3e-3) for r in records)  # each visit restarts
    steps = records[0]["steps"]
    last = 1e-5 + 0.5 * (3e-3 - 1e-5) * (1 + np.cos(2 * np.pi * (steps - 1) / steps))
    assert records[0]["lr_first_last"][1] == pytest.approx(last, rel=1e-4)
    assert all(r["distance_to_anchor"] > 0 for r in records)
    for task in tasks:  # neither task forgotten after the other's visits
        x, y = held[task.name]
        scores = np.asarray(task.model.predict(x, verbose=0))[:, 0]
        auc = mean_auc(y, scores)
        null = auc_permutation_null(y, scores, n=200, seed=0)  # labels shuffled, same size
        assert auc > np.percentile(null, 99) and permutation_p(auc, null) < 0.01, (
            task.name, null_summary(auc, null))


def test_l2sp_holds_the_shared_weights():
    distances = {}
    for alpha in (0.0, 300.0):
        backbone, tasks, _ = _tasks(seed=1)
        rec = continual_learning(backbone, tasks[:1], rounds=1, epochs=2, max_lr=3e-3,
                                 l2sp=(alpha, 0.0), seed=0)
        distances[alpha] = rec[0]["distance_to_anchor"]
    assert distances[300.0] < 0.3 * distances[0.0], distances


def test_mtpret_minus_minus_keeps_the_order_and_one_decay():
    backbone, tasks, _ = _tasks(seed=2, n=64, n_train=64)
    rec = continual_learning(backbone, tasks, rounds=2, epochs=1, max_lr=1e-3, min_lr=0.0,
                             variant="mtpret--", seed=0)
    assert [r["task"] for r in rec] == ["left", "top", "left", "top"]
    lrs = [r["lr_first_last"][0] for r in rec]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)
    assert "distance_to_anchor" not in rec[0]
    resumed = continual_learning(backbone, tasks, rounds=2, epochs=1, max_lr=1e-3, min_lr=0.0,
                                 variant="mtpret--", seed=0, start_round=2)
    assert [(r["round"], r["task"]) for r in resumed] == [(2, "left"), (2, "top")]
    assert resumed[0]["lr_first_last"] == pytest.approx(rec[2]["lr_first_last"])  # same schedule
    with pytest.raises(ValueError, match="variant"):
        continual_learning(backbone, tasks, variant="other")


JAX_CHECK = r"""
import json, numpy as np, keras
from cxr_keras.models.backbones import multiscale_backbone
from cxr_keras.models.task_heads import task_model
from cxr_keras.training.multitask import Task, continual_learning
keras.utils.set_random_seed(0)
b = multiscale_backbone("resnet18", input_shape=(32, 32, 3), widths=(4, 8, 8, 8))
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 32, 32, 3)).astype("float32"); y = (rng.random((32, 1)) < 0.5).astype("float32")
import tensorflow as tf
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
t = Task("a", task_model(b, "classification", 1, "a"), ds, keras.losses.BinaryCrossentropy(from_logits=True))
out = {}
for alpha in (0.0, 1e4):
    rec = continual_learning(b, [t], rounds=1, epochs=6, l2sp=(alpha, 0.0))
    out[str(alpha)] = rec[0]["distance_to_anchor"]
print(json.dumps({"backend": keras.backend.backend(), **out}))
"""


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_continual_learning_with_l2sp_on_the_jax_backend():
    info = last_json(run_on_jax(JAX_CHECK))
    assert info["backend"] == "jax" and 0 < info["10000.0"] < 0.5 * info["0.0"], info
