"""mtpret's multitask continual learning (Liao et al. 2024, Sec. III-C, Algorithm 2): one shared
backbone, one head per task; in each round every task is trained in turn, the order reshuffled
every round, with the cyclic cosine learning rate of eq. (4) over each task's visit and the L2-SP
penalty of eq. (5) pulling the shared weights toward their values at the start of the round
(the previous round's result; the pretrained weights in round 1) and decaying the heads.
``variant="mtpret--"`` drops both: a fixed task order, no L2-SP, one cosine decay over the whole
run (CHOICE for "without the cyclic and reshuffled schedule").

Each task is a :class:`Task` holding a model built on the shared backbone
(:func:`cxr_keras.models.task_heads.task_model`), its datasets, loss and metrics. Training goes
through ``model.fit`` of a thin wrapper whose loss adds the penalty, so it runs on any backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ..io import atomic_path, write_json
from ..regularizers import L2SP
from .cyclic_cosine import CyclicCosine
from .fit import compile_built

VARIANTS = ("mtpret", "mtpret--")


@dataclass
class Task:
    """One task: ``model`` (image -> logits, built on the shared backbone), ``train`` (a finite
    dataset of (image, target) batches, one pass = one epoch) and optional ``val``; ``loss=None``
    for a model that computes its own loss (a :class:`~cxr_keras.models.FasterRCNN` on the same
    backbone, fed by :func:`cxr_keras.data.detection_inputs.faster_rcnn_inputs`)."""
    name: str
    model: keras.Model
    train: object
    loss: object
    val: object = None
    metrics: list = field(default_factory=list)
    steps_per_epoch: int | None = None


class PenalisedModel(keras.Model):
    """``inner`` with ``penalty()`` added to its loss (used for L2-SP; not meant to be saved:
    save ``inner``). ``own_loss``: the inner model computes its loss itself (compiled without
    one, e.g. :class:`~cxr_keras.models.FasterRCNN`); its logged loss terms are logged here too."""

    def __init__(self, inner, penalty, own_loss: bool = False, **kwargs):
        super().__init__(name=f"{inner.name}_penalised", **kwargs)
        self.inner, self.penalty, self.own_loss = inner, penalty, bool(own_loss)
        self.term_trackers = {k: keras.metrics.Mean(name=k)
                              for k in getattr(inner, "loss_trackers", {})} if own_loss else {}

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.own_loss:
            loss = self.inner.compute_loss(x, y, y_pred, sample_weight, training)
        else:
            loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss + self.penalty()

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for k, tracker in self.term_trackers.items():
            tracker.update_state(y_pred[k])
        return super().compute_metrics(x, y, y_pred, sample_weight)


def shared_and_head_variables(task_model, backbone):
    """(backbone trainable variables, the task's own trainable variables)."""
    shared = {id(v) for v in backbone.trainable_variables}
    head = [v for v in task_model.trainable_variables if id(v) not in shared]
    return list(backbone.trainable_variables), head


def task_order(names, rounds: int, seed: int, reshuffle: bool = True) -> list:
    """The task order of each round: a seeded permutation per round, or the given order."""
    rng = np.random.default_rng(seed)
    return [list(rng.permutation(names)) if reshuffle else list(names) for _ in range(rounds)]


def _steps(task: Task) -> int:
    if task.steps_per_epoch:
        return int(task.steps_per_epoch)
    n = getattr(task.train, "cardinality", None)
    count = int(n()) if callable(n) else -1
    if count <= 0:
        raise ValueError(f"task {task.name}: give steps_per_epoch (its dataset has no known size)")
    return count


def continual_learning(backbone, tasks, rounds: int = 3, epochs: int = 1, max_lr: float = 1e-3,
                       min_lr: float = 1e-5, variant: str = "mtpret", l2sp=(0.1, 0.01),
                       optimizer: str = "adam", seed: int = 0, verbose: int = 0,
                       on_visit=None, start_round: int = 1) -> list:
    """Train ``tasks`` (list of :class:`Task`) on ``backbone`` for ``rounds`` rounds of ``epochs``
    epochs per task visit. Returns one record per visit (round, task, order, learning rates,
    history, L2-SP distance of the shared weights at the end). ``on_visit(record)`` is called
    after every visit (checkpointing, evaluation). ``start_round`` > 1 resumes: the weights are
    those at the end of round ``start_round - 1`` and the earlier rounds are skipped (the orders
    and the MTPret-- schedule are those of the whole run)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    by_name = {t.name: t for t in tasks}
    if len(by_name) != len(tasks):
        raise ValueError("task names must be unique")
    full = variant == "mtpret"
    orders = task_order(list(by_name), rounds, seed, reshuffle=full)
    total = sum(_steps(t) for t in tasks) * epochs * rounds
    done, records = 0, []
    for r, order in enumerate(orders, start=1):
        if r < start_round:
            done += sum(_steps(by_name[name]) * epochs for name in order)
            continue
        reg = L2SP(*l2sp) if full else None
        if reg is not None:
            reg.anchor(backbone.trainable_variables)  # w_S^0: the previous round's weights
        for name in order:
            task = by_name[name]
            steps = _steps(task) * epochs
            if full:
                schedule = CyclicCosine(max_lr, min_lr, cycle_steps=steps)
            else:  # one cosine decay over the whole run, resumed where the last visit stopped
                schedule = _OffsetCosine(max_lr, min_lr, total, done)
            opt = (keras.optimizers.Adam(schedule) if optimizer == "adam"
                   else keras.optimizers.SGD(schedule, momentum=0.9))
            model = task.model
            if reg is not None:
                shared, head = shared_and_head_variables(task.model, backbone)
                model = PenalisedModel(task.model, lambda s=shared, h=head, g=reg: g(s, h),
                                       own_loss=task.loss is None)
            compile_built(model, opt, loss=task.loss, metrics=list(task.metrics))
            hist = model.fit(task.train, validation_data=task.val, epochs=epochs,
                             steps_per_epoch=task.steps_per_epoch, verbose=verbose)
            done += steps
            record = {"round": r, "task": name, "order": order, "steps": steps,
                      "lr_first_last": [float(schedule(0)), float(schedule(steps - 1))],
                      "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()}}
            if reg is not None:
                record["distance_to_anchor"] = reg.distance(backbone.trainable_variables)
            records.append(record)
            if on_visit is not None:
                on_visit(record)
    return records


def last_losses(records, names) -> dict:
    """``{task: [its loss at the end of each visit, in order]}`` of :func:`continual_learning`'s
    records."""
    return {name: [r["history"]["loss"][-1] for r in records if r["task"] == name] for name in names}


def visits_table(records) -> list:
    """Markdown lines: one row per visit of :func:`continual_learning` -- round, task, last-epoch
    loss, first and last learning rate, and the L2-SP distance ("-" without L2-SP)."""
    lines = ["| round | task | loss (last epoch) | lr first / last | L2-SP distance |",
             "|---:|---|---:|---|---:|"]
    for r in records:
        dist = r.get("distance_to_anchor")
        lines.append(f"| {r['round']} | {r['task']} | {r['history']['loss'][-1]:.4f} | "
                     f"{r['lr_first_last'][0]:.2e} / {r['lr_first_last'][1]:.2e} | "
                     f"{'-' if dist is None else f'{dist:.4f}'} |")
    return lines


class RoundCheckpoints:
    """:func:`continual_learning` resumable at its last finished round: after every round each
    task model (and so the shared backbone) is saved to ``folder/<task>.weights.h5`` and the visit
    records so far to ``folder/rounds.json``; opened on a folder holding them, the task models are
    loaded back. Pass ``on_visit`` and ``start_round=done + 1`` to :func:`continual_learning`;
    ``records`` holds every visit, the earlier runs' included."""

    def __init__(self, folder, tasks):
        self.folder, self.tasks = Path(folder), list(tasks)
        self.state = self.folder / "rounds.json"
        self.records = json.loads(self.state.read_text()) if self.state.exists() else []
        self.done = max([r["round"] for r in self.records], default=0)
        for t in self.tasks if self.done else ():  # every task model at the end of that round
            t.model.load_weights(self.folder / f"{t.name}.weights.h5")

    def on_visit(self, record):
        """Record (and print) a visit; checkpoint the round after its last task."""
        self.records.append(record)
        print(f"round {record['round']} task {record['task']}: "
              + ", ".join(f"{k} {v[-1]:.4f}" for k, v in record["history"].items()))
        if record["task"] == record["order"][-1]:  # the round is finished: checkpoint it
            for t in self.tasks:
                with atomic_path(self.folder / f"{t.name}.weights.h5", suffix=".weights.h5") as tmp:
                    t.model.save_weights(tmp)
            write_json(self.state, self.records)
            self.done = record["round"]


class _OffsetCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine from max_lr to min_lr over ``total`` steps, seen from step ``offset`` on."""

    def __init__(self, max_lr, min_lr, total, offset):
        self.max_lr, self.min_lr, self.total, self.offset = max_lr, min_lr, max(1, total), offset

    def __call__(self, step):
        t = (keras.ops.cast(step, "float32") + self.offset) / self.total
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1 + keras.ops.cos(math.pi * t))

    def get_config(self):
        return {"max_lr": self.max_lr, "min_lr": self.min_lr, "total": self.total,
                "offset": self.offset}
