"""Raw pixels in, model input out: the evaluation preprocessing of a run as a layer.

:class:`RawImagePreprocessing` takes a batch of grey images exactly as they come off the scanner or
the PNG decoder (``uint8``, or ``uint16`` 16-bit PNG values), of any size, and does in the graph
what the package does in Python before evaluation (:mod:`cxr_keras.data.cache`, then
:mod:`cxr_keras.data.pipeline` with ``training=False``):

1. ``uint16`` -> ``round(x / 257)`` (the 8-bit value :func:`~cxr_keras.data.images.read_image` gives);
2. resize to ``resize_to`` with OpenCV's ``INTER_CUBIC`` (:func:`opencv_cubic_resize`), rounded and
   saturated to 0..255 as the ``uint8`` cache stores it;
3. centre crop ``center_crop`` (offsets ``(size - crop) // 2``);
4. bilinear resize to ``output_size`` (``tf.image.resize``'s half-pixel bilinear, no antialias);
5. the grey value repeated to ``channels``; 6. the normalisation of the run (``imagenet``: ImageNet
   mean / std of 0-1 values; ``unit``: /255; ``mtpret``: the paper's Z-score; ``none``).

Built from ``keras.ops`` only, so it exports to a SavedModel, ONNX and LiteRT (no Flex ops) and runs
on the JAX backend. An exported model built on it answers raw images with the probabilities of the
Keras model plus the Python preprocessing (:mod:`cxr_keras.export` checks it).
"""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MTPRET_MEAN, MTPRET_STD = 122.786, 18.390  # on the 0-255 scale (mtpret's Z-score)
NORMALIZATIONS = ("imagenet", "unit", "mtpret", "none")
CUBIC_A = -0.75  # OpenCV's INTER_CUBIC kernel (Keys' kernel with a = -0.75; TF's bicubic: -0.5)


def _cubic_taps(n_in, n_out: int):
    """Source rows (n_out, 4) and weights (n_out, 4) of OpenCV's cubic resize along one axis:
    ``f = (d + 0.5) * n_in / n_out - 0.5``, taps ``floor(f) - 1 .. floor(f) + 2`` clamped to the
    image (border replicated), Keys' weights with ``a = -0.75`` at ``t = f - floor(f)``."""
    a = CUBIC_A
    scale = ops.cast(n_in, "float32") / float(n_out)
    f = (ops.arange(n_out, dtype="float32") + 0.5) * scale - 0.5
    start = ops.floor(f)
    t = f - start
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    w3 = 1.0 - w0 - w1 - w2
    offsets = ops.convert_to_tensor([-1, 0, 1, 2], dtype="int32")
    rows = ops.expand_dims(ops.cast(start, "int32"), 1) + offsets
    rows = ops.clip(rows, 0, ops.cast(n_in, "int32") - 1)
    return rows, ops.stack([w0, w1, w2, w3], axis=1)


def opencv_cubic_resize(x, size):
    """Resize ``x`` (N, H, W) float on 0-255 to ``size`` (h, w) like ``cv2.resize(...,
    INTER_CUBIC)`` on ``uint8`` images: separable cubic, then rounded and saturated to 0..255.

    Equals OpenCV 5 on all but about 1 in 100,000 pixels (by 1 grey level, where the exact value
    is within float32 rounding of a .5); checked against ``cv2.resize`` in the tests.
    """
    h, w = int(size[0]), int(size[1])
    shape = ops.shape(x)
    cols, wx = _cubic_taps(shape[2], w)
    x = ops.sum(ops.take(x, cols, axis=2) * wx, axis=-1)  # (N, H, w)
    rows, wy = _cubic_taps(shape[1], h)
    x = ops.sum(ops.take(x, rows, axis=1) * ops.expand_dims(wy, -1), axis=2)  # (N, h, w)
    return ops.clip(ops.round(x), 0.0, 255.0)


def _pair(value, name):
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"RawImagePreprocessing: {name} must be a positive int or (h, w), got {value!r}")
    return pair


@keras.saving.register_keras_serializable(package="cxr_keras")
class RawImagePreprocessing(keras.layers.Layer):
    """Grey ``uint8`` / ``uint16`` images (N, H, W) or (N, H, W, 1) of any size -> the model's
    float32 input (N, h, w, channels); the steps of the module docstring.

    Args:
        resize_to: (h, w) or int, the size of the run's image cache (OpenCV cubic).
        center_crop: (h, w) or int, the evaluation centre crop, or None.
        output_size: (h, w), a last bilinear resize (mtpret's ``image_size``), or None.
        channels: 1 or 3. normalization: one of ``NORMALIZATIONS``.

    Example:
        >>> pre = RawImagePreprocessing(resize_to=256, center_crop=224)
        >>> pre(np.zeros((1, 600, 480), np.uint8)).shape
        (1, 224, 224, 3)
    """

    def __init__(self, resize_to, center_crop=None, output_size=None, channels=3,
                 normalization="imagenet", **kwargs):
        super().__init__(**kwargs)
        self.resize_to = _pair(resize_to, "resize_to")
        self.center_crop = _pair(center_crop, "center_crop")
        self.output_size = _pair(output_size, "output_size")
        if self.center_crop and any(c > r for c, r in zip(self.center_crop, self.resize_to)):
            raise ValueError(f"RawImagePreprocessing: center_crop {self.center_crop} is larger than "
                             f"resize_to {self.resize_to}")
        if channels not in (1, 3):
            raise ValueError(f"RawImagePreprocessing: channels must be 1 or 3, got {channels!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"RawImagePreprocessing: normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}")
        self.channels, self.normalization = int(channels), normalization

    def call(self, images):
        if len(images.shape) == 4:
            images = ops.squeeze(images, axis=-1)
        x = ops.cast(images, "float32")
        if images.dtype == "uint16":
            x = ops.round(x / 257.0)
        x = opencv_cubic_resize(x, self.resize_to)
        if self.center_crop:
            (rh, rw), (ch, cw) = self.resize_to, self.center_crop
            oy, ox = (rh - ch) // 2, (rw - cw) // 2
            x = x[:, oy:oy + ch, ox:ox + cw]
        x = ops.expand_dims(x, -1)
        if self.output_size:
            x = ops.image.resize(x, self.output_size, interpolation="bilinear", antialias=False)
        if self.channels == 3:
            x = ops.concatenate([x, x, x], axis=-1)
        return self._normalize(x)

    def _normalize(self, x):
        if self.normalization == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if self.channels == 1:
                mean, std = (sum(mean) / 3,), (sum(std) / 3,)
            mean = ops.convert_to_tensor(mean, dtype="float32")
            std = ops.convert_to_tensor(std, dtype="float32")
            return (x / 255.0 - mean) / std
        if self.normalization == "unit":
            return x / 255.0
        if self.normalization == "mtpret":
            return (x - MTPRET_MEAN) / MTPRET_STD
        return x

    def compute_output_shape(self, input_shape):
        h, w = self.output_size or self.center_crop or self.resize_to
        return (input_shape[0], h, w, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(resize_to=list(self.resize_to),
                      center_crop=list(self.center_crop) if self.center_crop else None,
                      output_size=list(self.output_size) if self.output_size else None,
                      channels=self.channels, normalization=self.normalization)
        return config
