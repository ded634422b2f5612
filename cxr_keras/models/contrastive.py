"""Contrastive pretraining for mtpret (SPEC section 5): MoCo v2 and SimCLR.

:class:`MoCo` (He et al., CVPR 2020; v2: Chen et al. 2020): a query encoder (backbone + 2-layer MLP
head, trained) and a key encoder (a copy, updated by momentum, never by gradient); each image
gives two augmented views, the query q and key k (both L2-normalised); InfoNCE with temperature T
against the positive key and a queue of K negative keys from earlier batches:

    L = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.n_j / T))        (MoCo eq. 1)

After every step the key encoder follows theta_k <- m theta_k + (1 - m) theta_q (MoCo eq. 2) and
the batch's keys replace the oldest ones in the queue (a non-trainable variable of the model).

:class:`SimCLR` (Chen et al., ICML 2020): one encoder + head; NT-Xent over the 2N views of a batch,
each view's positive is the other view of its image and its negatives the other 2N - 2 views.

Both are ``keras.Model`` subclasses trained with ``model.fit`` on ``(query_view, key_view)`` pairs
(``compile(optimizer)`` without a loss) on the TensorFlow and JAX backends; logged: loss and the
top-1 accuracy of finding the positive (``contrast_acc``). ``model.encoder`` is the backbone that
downstream tasks take over.

CHOICES (MoCo v2 defaults, SPEC): queue 65,536, m 0.999, T 0.2, head 2048-128 with ReLU. The key
encoder runs its BatchNormalization in inference mode on moving statistics that follow the query
encoder's by the same momentum (no batch statistics, so no leak between the two views, which MoCo
avoids with shuffled BN across GPUs).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ._ema_step import train_step_then_ema
from ._loss_terms_model import LossTermsModel


def info_nce_logits(q, k, queue, temperature):
    """(B, 1 + K) logits: the positive q.k first, then q against every queued key, over T."""
    pos = ops.sum(q * k, axis=-1, keepdims=True)
    neg = ops.matmul(q, ops.transpose(queue))
    return ops.concatenate([pos, neg], axis=1) / temperature


def cross_entropy_first(logits):
    """Mean over rows of -log softmax(logits)[0] (the positive is column 0), and top-1 hits (a
    tie with a negative is a miss, so a collapsed encoder scores 0, not 1)."""
    logits = ops.cast(logits, "float32")
    loss = ops.mean(ops.logsumexp(logits, axis=1) - logits[:, 0])
    acc = ops.mean(ops.cast(logits[:, 0] > ops.max(logits[:, 1:], axis=1), "float32"))
    return loss, acc


def nt_xent(z1, z2, temperature):
    """NT-Xent (SimCLR eq. 1) averaged over the 2N views, and the top-1 accuracy of the positive."""
    z = ops.concatenate([z1, z2], axis=0)
    n = ops.shape(z1)[0]
    sim = ops.matmul(z, ops.transpose(z)) / temperature
    sim = ops.cast(sim, "float32") - 1e9 * ops.eye(2 * n, dtype="float32")  # no self-pairs
    idx = ops.arange(2 * n)
    positive = (idx + n) % (2 * n)
    pos_logit = ops.take_along_axis(sim, positive[:, None], axis=1)[:, 0]
    loss = ops.mean(ops.logsumexp(sim, axis=1) - pos_logit)
    others = sim - 1e9 * ops.one_hot(positive, 2 * n, dtype="float32")
    acc = ops.mean(ops.cast(pos_logit > ops.max(others, axis=1), "float32"))  # ties are misses
    return loss, acc


def _mlp_head(hidden, dim, name):
    return keras.Sequential([layers.Dense(hidden, activation="relu", name="fc1"),
                             layers.Dense(dim, name="fc2")], name=name)


def _normalise(x):
    x = ops.cast(x, "float32")
    return x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def _views(inputs):
    if isinstance(inputs, dict):
        return inputs["query"], inputs["key"]
    if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
        return inputs[0], inputs[1]
    raise ValueError("contrastive models take two views: (query_view, key_view) or "
                     "{'query': ..., 'key': ...}")


class _Contrastive(LossTermsModel):
    total_key = "loss_value"

    def __init__(self, encoder, dim, hidden, temperature, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if len(encoder.output.shape) != 2:
            raise ValueError(f"the encoder must give pooled features (batch, channels), got "
                             f"{encoder.output.shape}; build it with pooling='avg'")
        self.encoder = encoder
        self.dim, self.hidden, self.temperature = int(dim), int(hidden), float(temperature)
        self.head = _mlp_head(self.hidden, self.dim, "head")
        self.head.build(encoder.output.shape)
        self.loss_trackers = {"contrast_acc": keras.metrics.Mean(name="contrast_acc")}

    def embed(self, images, training=False):
        """The L2-normalised projection of the query / online branch."""
        return _normalise(self.head(self.encoder(images, training=training), training=training))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden,
                "temperature": self.temperature,
                "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="cxr_keras")
class MoCo(_Contrastive):
    """MoCo v2 on ``encoder`` (a model giving pooled features, e.g. ``resnet18(include_top=False,
    pooling="avg")``), see the module docstring. ``queue_size`` K (use fewer than the default
    65,536 on small data: the queue should not hold many keys of the same images)."""

    def __init__(self, encoder, dim=128, hidden=2048, queue_size=65536, momentum=0.999,
                 temperature=0.2, seed=None, **kwargs):
        kwargs.setdefault("name", "moco")
        super().__init__(encoder, dim, hidden, temperature, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        self.queue_size, self.momentum, self.seed = int(queue_size), float(momentum), seed
        self.key_encoder = keras.models.clone_model(encoder)
        self.key_encoder.name = "key_encoder"
        self.key_head = _mlp_head(self.hidden, self.dim, "key_head")
        self.key_head.build(encoder.output.shape)
        for part in (self.key_encoder, self.key_head):
            part.trainable = False
        rng = np.random.default_rng(seed)
        init = rng.normal(size=(self.queue_size, self.dim)).astype("float32")
        init /= np.linalg.norm(init, axis=1, keepdims=True)
        self.queue = self.add_weight(shape=(self.queue_size, self.dim), name="queue",
                                     initializer=keras.initializers.Constant(init), trainable=False)
        self.queue_ptr = self.add_weight(shape=(), name="queue_ptr", dtype="int32",
                                         initializer="zeros", trainable=False)
        self._pairs = list(zip(self.key_encoder.weights + self.key_head.weights,
                               self.encoder.weights + self.head.weights))
        for k, q in self._pairs:
            if k.shape != q.shape:
                raise RuntimeError(f"MoCo: key {k.path} does not mirror query {q.path}")
            k.assign(np.array(keras.ops.convert_to_numpy(q)))  # a copy: JAX must not share buffers
        self.built = True

    def call(self, inputs, training=False):
        x_q, x_k = _views(inputs)
        q = self.embed(x_q, training=training)
        k = ops.stop_gradient(_normalise(self.key_head(self.key_encoder(x_k, training=False),
                                                       training=False)))
        logits = info_nce_logits(q, k, ops.stop_gradient(self.queue), self.temperature)
        loss, acc = cross_entropy_first(logits)
        if training:
            self.enqueue(k)
        return {"logits": logits, "q": q, "k": k, "loss_value": loss, "contrast_acc": acc}

    def enqueue(self, keys):
        """Write ``keys`` over the oldest rows of the queue (rows ptr .. ptr + B - 1, mod K)."""
        b = ops.shape(keys)[0]
        rows = (ops.cast(self.queue_ptr, "int32") + ops.arange(b, dtype="int32")) % self.queue_size
        self.queue.assign(ops.scatter_update(self.queue, rows[:, None],
                                             ops.cast(keys, self.queue.dtype)))
        self.queue_ptr.assign((ops.cast(self.queue_ptr, "int32") + b) % self.queue_size)

    # ------------------------------------------------------------- MoCo eq. (2), every step
    def train_step(self, *args, **kwargs):
        """The optimiser step, then theta_k <- m theta_k + (1 - m) theta_q on every key-encoder
        and key-head weight."""
        return train_step_then_ema(self, super().train_step, self._pairs, self.momentum, *args,
                                   **kwargs)

    def get_config(self):
        return {**super().get_config(), "queue_size": self.queue_size, "momentum": self.momentum,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_keras")
class SimCLR(_Contrastive):
    """SimCLR on ``encoder``: NT-Xent over both views of every image of the batch (CHOICE: T 0.2
    as MoCo v2, head 2048-128; SimCLR's own defaults are T 0.5 and a 2048-d output)."""

    def __init__(self, encoder, dim=128, hidden=2048, temperature=0.2, **kwargs):
        kwargs.setdefault("name", "simclr")
        super().__init__(encoder, dim, hidden, temperature, **kwargs)
        self.built = True

    def call(self, inputs, training=False):
        x1, x2 = _views(inputs)
        z = self.embed(ops.concatenate([x1, x2], axis=0), training=training)
        n = ops.shape(x1)[0]
        z1, z2 = z[:n], z[n:]
        loss, acc = nt_xent(z1, z2, self.temperature)
        return {"z1": z1, "z2": z2, "loss_value": loss, "contrast_acc": acc}
