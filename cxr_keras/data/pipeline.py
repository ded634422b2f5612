"""tf.data input pipelines over an image cache (TF-specific module).

``make_dataset(cache, "train", preset="fzlpr", training=True, batch_size=64)`` gives a
``tf.data.Dataset`` of ``(images, targets)`` batches usable as ``model.fit`` input on the
TensorFlow and JAX backends and under ``tf.distribute.MirroredStrategy`` (the batch size is the
global one). The order of each epoch is a seeded permutation of the split, a function of
(seed, epoch) only, and augmentation is stateless per element: the same seed gives the same
batches. The epoch number is kept in ``dataset.epoch_state``; :class:`EpochCallback` sets it at
the start of every epoch so that a resumed run (:class:`~cxr_keras.training.fit.EpochBackup`)
sees the same data order as an uninterrupted one.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..layers.raw_image import IMAGENET_MEAN, IMAGENET_STD, MTPRET_MEAN, MTPRET_STD, NORMALIZATIONS
from ..training.multihost import data_shard
from . import augment
from .cache import Cache


def normalize(image, normalization: str):
    """Map an image on 0-255 to the model's input scale."""
    if normalization == "imagenet":
        channels = image.shape[-1]
        mean = tf.constant(IMAGENET_MEAN[:channels] if channels == 3 else [np.mean(IMAGENET_MEAN)])
        std = tf.constant(IMAGENET_STD[:channels] if channels == 3 else [np.mean(IMAGENET_STD)])
        return (image / 255.0 - mean) / std
    if normalization == "unit":
        return image / 255.0
    if normalization == "mtpret":
        return (image - MTPRET_MEAN) / MTPRET_STD
    if normalization == "none":
        return image
    raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")


def imagenet_grey(x) -> np.ndarray:
    """ImageNet-normalised images (N, H, W, C) back to grey uint8 (N, H, W), for figures."""
    rgb = np.asarray(x) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(rgb[..., 0] * 255, 0, 255).astype(np.uint8)


class EpochCallback(keras.callbacks.Callback):
    """Tell a pipeline which epoch is starting (needed for exact resumption)."""

    def __init__(self, *datasets):
        super().__init__()
        self.states = [d.epoch_state for d in datasets if hasattr(d, "epoch_state")]

    def on_epoch_begin(self, epoch, logs=None):
        for s in self.states:
            s["epoch"] = int(epoch)


def make_dataset(cache, split, *, preset="none", training: bool = False, batch_size: int = 32,
                 seed: int = 0, normalization: str = "imagenet", channels: int = 3,
                 target: str = "labels", labels=None, one_hot: bool = False,
                 output_size=None, max_boxes: int = 16, shuffle=None, repeat: bool = False,
                 drop_remainder: bool = False, prefetch: int = tf.data.AUTOTUNE,
                 targets=None, views: int = 1) -> tf.data.Dataset:
    """A batched dataset over the rows of ``split`` (``"train"``, ``"val"``, ``"test"`` or None = all).

    target: ``"labels"`` (multi-hot float32 with NaN = ignore, or integer class, ``one_hot`` for a
    one-hot float vector), ``"mask"`` (float32 (H, W, 1)), ``"boxes"`` ((max_boxes, 5) rows
    [x, y, w, h, class] in output pixels, padding class -1), or ``"none"`` (images only).
    ``labels`` selects a subset of the label columns. ``output_size`` (h, w) resizes the augmented
    image last. ``shuffle`` defaults to ``training``. ``targets``: an explicit float array, one
    row per row of ``split`` in cache order, used instead of the cache's labels (e.g. CheXpert's
    uncertainty policies applied to one cache built with ``uncertain="ignore"``). ``views=2``
    (with ``target="none"``): two independently augmented views of each image, as the pair
    ``(view_1, view_2)`` that contrastive models (MoCo, SimCLR) train on.

    Multi-host training (:mod:`cxr_keras.training.multihost`): with ``training=True`` each of the P
    processes reads every P-th row of the epoch's order in batches of ``batch_size / P``.
    """
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    preset = augment.get_preset(preset)
    shuffle = training if shuffle is None else shuffle
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    if views not in (1, 2) or (views == 2 and target != "none"):
        raise ValueError(f"views must be 1, or 2 with target='none'; got views={views}, "
                         f"target={target!r}")
    rows = cache.rows(split)
    if len(rows) == 0:
        raise ValueError(f"split {split!r} of the cache {cache.path} has no rows")
    n = len(rows)
    if target == "mask" and not cache.meta.get("has_masks"):
        raise ValueError(f"target='mask' but the cache {cache.path} has no masks")
    with_mask = target == "mask"
    if targets is None:
        y = _targets(cache, rows, target, labels, one_hot, max_boxes)
    elif target != "labels" or len(targets) != n:
        raise ValueError(f"targets= needs target='labels' and one row per row of split {split!r} "
                         f"({n}), got {len(targets)} rows and target={target!r}")
    else:
        y = np.asarray(targets, np.float32)
    shards, offsets = rows["shard"].to_numpy(), rows["offset"].to_numpy()
    state = {"epoch": 0}
    process, processes = data_shard() if training else (0, 1)
    if batch_size % processes:
        raise ValueError(f"batch_size={batch_size} does not split over {processes} processes")
    batch_size //= processes
    positions = np.arange(process, n - n % processes, processes)  # the same count everywhere

    def gen():
        # Images are read from the memory-mapped shards, so a split larger than memory works.
        epoch = state["epoch"]
        state["epoch"] += 1  # the next pass reshuffles unless EpochCallback says otherwise
        idx = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        for k in positions:  # k: the position in the epoch's order (seeds the augmentation)
            i = idx[k]
            image = cache.images(shards[i])[offsets[i]]
            if with_mask:
                yield np.int64(epoch * n + k), np.int64(i), image, cache.masks(shards[i])[offsets[i]]
            else:
                yield np.int64(epoch * n + k), np.int64(i), image

    size = cache.size
    sig = [tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
           tf.TensorSpec([size, size], tf.uint8)]
    if with_mask:
        sig.append(tf.TensorSpec([size, size], tf.uint8))
    ds = tf.data.Dataset.from_generator(gen, output_signature=tuple(sig))
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(positions)))  # lets fit know the epoch length
    y_t = tf.constant(y) if y is not None else None
    randaug = (keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                        factor=preset.randaugment / 10.0, seed=seed)
               if training and preset.randaugment else None)

    def element(k, i, image, mask=None):
        if views == 2:  # a seed per view: k -> (2k, 2k + 1)
            return tuple(view(2 * k + v, i, image) for v in (0, 1))
        return view(k, i, image, mask)

    def view(k, i, image, mask=None):
        elem_seed = tf.stack([tf.constant(seed, tf.int64), k])
        image = tf.cast(image, tf.float32)[..., None]
        mask = tf.cast(mask, tf.float32)[..., None] if mask is not None else None
        boxes = tf.gather(y_t, i) if target == "boxes" else None
        image, mask, boxes = augment.apply(preset, image, elem_seed, mask=mask, boxes=boxes,
                                           training=training)
        if output_size is not None:
            image, mask, boxes = augment._resize(image, mask, boxes, tf.constant(output_size))
        if channels == 3:
            image = tf.tile(image, [1, 1, 3])
        if randaug is not None:
            image = tf.cast(randaug(image), tf.float32)
        image = normalize(image, normalization)
        if target == "none":
            return image
        if target == "mask":
            return image, mask
        if target == "boxes":
            return image, boxes
        return image, tf.gather(y_t, i)

    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if views == 2:  # fit reads a 1-tuple as x only
        ds = ds.map(lambda a, b: ((a, b),))
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(prefetch)
    ds.epoch_state = state
    ds.num_rows = n
    return ds


def _targets(cache, rows, target, labels, one_hot, max_boxes):
    if target in ("none", "mask"):
        return None
    if target == "boxes":
        out = np.full((len(rows), max_boxes, 5), [0, 0, 0, 0, -1], np.float32)
        from .cache import resize_geometry

        resize = cache.meta.get("resize", "squash")
        for r, (boxes, oh, ow) in enumerate(zip(rows["boxes"], rows["orig_h"], rows["orig_w"])):
            sx, sy, ox, oy = resize_geometry(int(oh), int(ow), cache.size, resize)
            for b, box in enumerate(list(boxes)[:max_boxes]):
                x, y, w, h, c = box
                out[r, b] = [x * sx + ox, y * sy + oy, w * sx, h * sy, c]
        return out
    if target != "labels":
        raise ValueError(f"target must be 'labels', 'mask', 'boxes' or 'none', got {target!r}")
    y = cache.targets(rows)
    if labels is not None:
        if cache.labels is None:
            raise ValueError("labels= selects label columns, but this cache is multi-class")
        unknown = [c for c in labels if c not in cache.labels]
        if unknown:
            raise ValueError(f"unknown label column(s) {unknown}; cache has {cache.labels}")
        y = y[:, [cache.labels.index(c) for c in labels]]
    if one_hot and cache.classes is not None:
        y = np.eye(len(cache.classes), dtype=np.float32)[y]
    return y
