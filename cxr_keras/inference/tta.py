"""Test-time augmentation (TTA): average the sigmoid outputs of a model over transformed views.

``fzlpr`` paper Sec. 4.3 / Table 3: original + horizontal flip + zoom +-10%, outputs averaged. The
paper does not say how many zoom views or how the zoomed-out border is filled. Our choices (SPEC
CHOICE, configurable): two zoom views, ``zoom_in`` (scale 1 + zoom) and ``zoom_out`` (scale
1 - zoom), both about the image centre with bilinear sampling; the border that zooming out uncovers
is filled by replicating the edge pixels (``fill_mode="nearest"``; "reflect", "constant" with
``fill_value``, "wrap" also accepted). Image ops are keras.ops, so any backend works.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from scipy import special

VIEWS = ("original", "hflip", "zoom_in", "zoom_out")

# Table 3 of the paper, as cumulative sets of views.
TABLE3_STEPS = (("original",), ("original", "hflip"), ("original", "hflip", "zoom_in", "zoom_out"))


def _spatial_axes():
    return (1, 2) if keras.config.image_data_format() == "channels_last" else (2, 3)


def zoom_images(images, scale, fill_mode="nearest", fill_value=0.0):
    """Zoom a batch (N, H, W, C) about its centre by ``scale`` (> 1 zooms in, < 1 zooms out).

    Output pixel x samples the input at c + (x - c) / scale with c = (size - 1) / 2, bilinear.
    For scale > 1 this equals a central crop of size/scale resized back to size (half-pixel
    centres), except that the outermost output pixels interpolate with the real pixels just
    outside the crop instead of clamping at its border; for scale < 1 it equals shrinking to
    size*scale and padding by ``fill_mode`` (the outermost pixels of the shrunk image aside).
    """
    images = ops.convert_to_tensor(images)
    if ops.ndim(images) != 4:
        raise ValueError(f"zoom_images expects a 4-D batch, got shape {images.shape}")
    ah, aw = _spatial_axes()
    h, w = images.shape[ah], images.shape[aw]
    inv = 1.0 / float(scale)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    transform = np.array([inv, 0.0, cx * (1 - inv), 0.0, inv, cy * (1 - inv), 0.0, 0.0],
                         dtype="float32")
    n = ops.shape(images)[0]
    transforms = ops.tile(ops.convert_to_tensor(transform)[None, :], [n, 1])
    return ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                      fill_mode=fill_mode, fill_value=fill_value)


def apply_view(images, view, zoom=0.1, fill_mode="nearest", fill_value=0.0):
    """One TTA view of a batch: "original", "hflip", "zoom_in" (1 + zoom), "zoom_out" (1 - zoom)."""
    images = ops.convert_to_tensor(images)
    if view == "original":
        return images
    if view == "hflip":
        return ops.flip(images, axis=_spatial_axes()[1])
    if view == "zoom_in":
        return zoom_images(images, 1.0 + zoom, fill_mode, fill_value)
    if view == "zoom_out":
        return zoom_images(images, 1.0 - zoom, fill_mode, fill_value)
    raise ValueError(f"unknown TTA view {view!r}; known: {VIEWS}")


def cumulative_means(view_probs, steps=TABLE3_STEPS):
    """Mean probabilities over growing sets of views (Table 3 rows).

    ``view_probs`` maps view -> (N, C) probabilities (from :meth:`TTAPredictor.predict_views`).
    Returns ``{"original": ..., "original+hflip": ..., ...}``, one entry per step, in order.
    """
    out = {}
    for step in steps:
        step = tuple(step)
        missing = [v for v in step if v not in view_probs]
        if missing:
            raise KeyError(f"cumulative_means: views {missing} not predicted")
        out["+".join(step)] = np.mean([np.asarray(view_probs[v]) for v in step], axis=0)
    return out


class TTAPredictor:
    """Average a model's activated outputs over test-time views (paper Sec. 4.3, Table 3).

    Args:
        model: a Keras model mapping an image batch to logits (or to probabilities with
            ``activation=None``).
        views: subset of :data:`VIEWS`, in order.
        zoom: relative zoom of the two zoom views (paper: 10%).
        activation: "sigmoid" (multi-label logits, default), "softmax", or None (identity).
        fill_mode, fill_value: how zooming out fills the border (see module docstring).
    """

    def __init__(self, model, views=VIEWS, zoom=0.1, activation="sigmoid", fill_mode="nearest",
                 fill_value=0.0):
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown TTA views {unknown}; known: {VIEWS}")
        if activation not in ("sigmoid", "softmax", None, "linear"):
            raise ValueError(f"activation must be 'sigmoid', 'softmax' or None, got {activation!r}")
        self.model = model
        self.views = tuple(views)
        self.zoom = float(zoom)
        self.activation = activation
        self.fill_mode = fill_mode
        self.fill_value = float(fill_value)

    def _activate(self, logits):
        logits = np.asarray(logits, dtype=np.float64)
        if self.activation == "sigmoid":
            return special.expit(logits)
        if self.activation == "softmax":
            return special.softmax(logits, axis=-1)
        return logits

    def _batches(self, x, batch_size):
        if hasattr(x, "shape") and hasattr(x, "__getitem__") and not isinstance(x, (list, tuple)):
            for start in range(0, int(x.shape[0]), batch_size):
                yield x[start:start + batch_size]
        else:  # an iterable of batches, e.g. a tf.data.Dataset or a generator; (x, y) -> x
            for batch in x:
                yield batch[0] if isinstance(batch, (tuple, list)) else batch

    def predict_views(self, x, batch_size=32):
        """Return ``{view: (N, C) activated outputs}`` for every configured view.

        ``x`` is an (N, H, W, C) array (processed ``batch_size`` images at a time) or an iterable
        of batches (an ``(x, y)`` tuple uses its first element).
        """
        parts = {v: [] for v in self.views}
        for xb in self._batches(x, batch_size):
            xb = ops.convert_to_tensor(xb, dtype="float32")
            for v in self.views:
                xv = apply_view(xb, v, self.zoom, self.fill_mode, self.fill_value)
                parts[v].append(self._activate(self.model.predict_on_batch(xv)))
        return {v: np.concatenate(p, axis=0) for v, p in parts.items()}

    def predict(self, x, batch_size=32):
        """Mean over the configured views of the activated outputs, shape (N, C)."""
        probs = self.predict_views(x, batch_size=batch_size)
        return np.mean([probs[v] for v in self.views], axis=0)
