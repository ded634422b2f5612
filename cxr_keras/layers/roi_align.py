"""RoI Align (He et al., Mask R-CNN 2017) in ``keras.ops``, as torchvision's ``roi_align`` with
``aligned=True``: each box (input pixels) is scaled by ``spatial_scale``, shifted by -0.5 (pixel
centres), cut into ``output_size`` x ``output_size`` bins, each bin the mean of
``sampling_ratio`` x ``sampling_ratio`` bilinear samples at regularly spaced points; a sample
more than one pixel outside the map is 0, one within a pixel is clamped to the border.

Under mixed precision the sampling runs in float32 (box coordinates in half precision would be
off by up to 4 pixels above 1024 in bfloat16) and the result has the features' dtype.
"""

from __future__ import annotations

import keras
from keras import ops


def _axis_samples(lo, hi, bins, ratio):
    """(B, R, bins * ratio) sample coordinates along one axis."""
    size = (hi - lo) / bins
    steps = ops.arange(bins * ratio, dtype="float32")
    bin_index = ops.floor(steps / ratio)
    sub = steps - bin_index * ratio
    return lo[..., None] + bin_index * size[..., None] + (sub + 0.5) * size[..., None] / ratio


def _bilinear_1d(coord, size):
    """Low / high integer neighbours, their weights and a validity mask along one axis."""
    valid = (coord >= -1.0) & (coord <= float(size))
    c = ops.clip(coord, 0.0, float(size - 1))
    low = ops.floor(c)
    high = ops.minimum(low + 1.0, float(size - 1))
    w_high = c - low
    return ops.cast(low, "int32"), ops.cast(high, "int32"), 1.0 - w_high, w_high, valid


def roi_align(features, boxes, output_size: int = 7, spatial_scale: float = 1.0 / 16,
              sampling_ratio: int = 2, aligned: bool = True):
    """``features`` (B, H, W, C), ``boxes`` (B, R, 4) as (x1, y1, x2, y2) -> (B, R, S, S, C),
    in the features' dtype (computed in float32)."""
    features = ops.convert_to_tensor(features)
    out_dtype = features.dtype
    b = ops.shape(features)[0]
    c = features.shape[3] if features.shape[3] is not None else ops.shape(features)[3]
    h_, w_ = int(features.shape[1]), int(features.shape[2])
    r = ops.shape(boxes)[1]
    offset = 0.5 if aligned else 0.0
    boxes = ops.cast(boxes, "float32") * spatial_scale - offset
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    if not aligned:  # torchvision: boxes at least one cell
        x2 = ops.maximum(x2, x1 + 1.0)
        y2 = ops.maximum(y2, y1 + 1.0)
    n = output_size * sampling_ratio
    ys = _axis_samples(y1, y2, output_size, sampling_ratio)  # (B, R, n)
    xs = _axis_samples(x1, x2, output_size, sampling_ratio)
    y_lo, y_hi, wy_lo, wy_hi, y_ok = _bilinear_1d(ys, h_)
    x_lo, x_hi, wx_lo, wx_hi, x_ok = _bilinear_1d(xs, w_)
    flat = ops.reshape(ops.cast(features, "float32"), (-1, c))
    base = ops.reshape(ops.arange(b, dtype="int32") * (h_ * w_), (-1, 1, 1, 1))

    def gather(yi, xi):
        idx = base + yi[..., :, None] * w_ + xi[..., None, :]  # (B, R, n, n)
        return ops.reshape(ops.take(flat, ops.reshape(idx, (-1,)), axis=0), (b, r, n, n, c))

    wy_lo, wy_hi = wy_lo[..., :, None, None], wy_hi[..., :, None, None]
    wx_lo, wx_hi = wx_lo[..., None, :, None], wx_hi[..., None, :, None]
    out = (gather(y_lo, x_lo) * wy_lo * wx_lo + gather(y_lo, x_hi) * wy_lo * wx_hi
           + gather(y_hi, x_lo) * wy_hi * wx_lo + gather(y_hi, x_hi) * wy_hi * wx_hi)
    ok = ops.cast(y_ok[..., :, None] & x_ok[..., None, :], out.dtype)[..., None]
    out = out * ok
    out = ops.reshape(out, (b, r, output_size, sampling_ratio, output_size, sampling_ratio, c))
    return ops.cast(ops.mean(out, axis=(3, 5)), out_dtype)


@keras.saving.register_keras_serializable(package="cxr_keras")
class RoIAlign(keras.layers.Layer):
    """Layer form of :func:`roi_align`: ``call([features, boxes])``; the output is in the
    layer's compute dtype. Inputs are not autocast, so that a mixed-precision policy does not
    round the box coordinates to half precision."""

    def __init__(self, output_size=7, spatial_scale=1.0 / 16, sampling_ratio=2, aligned=True,
                 **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_size, self.spatial_scale = int(output_size), float(spatial_scale)
        self.sampling_ratio, self.aligned = int(sampling_ratio), bool(aligned)

    def call(self, inputs):
        features, boxes = inputs
        return ops.cast(roi_align(features, boxes, self.output_size, self.spatial_scale,
                                  self.sampling_ratio, self.aligned), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        f, bx = input_shape
        return (f[0], bx[1], self.output_size, self.output_size, f[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "spatial_scale": self.spatial_scale, "sampling_ratio": self.sampling_ratio,
                "aligned": self.aligned}
