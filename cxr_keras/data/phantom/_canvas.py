"""Drawing primitives of the phantoms: the pixel canvas of the patient frame (sub-pixel cv2
drawing), smooth random fields, polygons, bounding boxes and one random stream per purpose."""

from __future__ import annotations

import cv2
import numpy as np

F32 = np.float32
SHIFT = 4                      # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT
AA = cv2.LINE_AA
RIGHT, LEFT = -1, 1             # patient side -> sign of u - cx (patient right = image left)


def random_stream(seed, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, stream])


def check_size(size) -> int:
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    return int(size)


# ============================================================================ canvas

class Canvas:
    """Similarity transform patient frame -> pixels, and lazily built patient-frame grids."""

    def __init__(self, s: int, rot_deg=0.0, scale=1.0, shift=(0.0, 0.0)):
        a = np.deg2rad(rot_deg)
        self.s, self.scale = s, float(scale)
        self.params = (rot_deg, scale, tuple(shift))
        self.A = self.scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.t = np.array([0.5 + shift[0], 0.5 + shift[1]])
        self._uv = None

    def resized(self, s: int) -> "Canvas":
        """The same patient placement on an s x s pixel grid."""
        return Canvas(s, *self.params)

    def xy(self, u, v) -> np.ndarray:
        """Float pixel coordinates (..., 2) of patient-frame points."""
        (a, b), (c, d) = self.A
        u = np.asarray(u, float) - 0.5
        v = np.asarray(v, float) - 0.5
        x = (a * u + b * v + self.t[0]) * self.s - 0.5
        y = (c * u + d * v + self.t[1]) * self.s - 0.5
        return np.stack(np.broadcast_arrays(x, y), -1)

    def pts(self, u, v) -> np.ndarray:
        """Fixed-point int32 pixel coordinates for cv2 drawing with ``shift=SHIFT``."""
        return np.round(self.xy(u, v) * ONE).astype(np.int32)

    def px(self, length):
        return length * self.s * self.scale

    def th(self, length) -> int:
        """Line thickness in whole pixels (at least 1)."""
        return max(1, int(round(self.px(length))))

    @property
    def uv(self):
        """(U, V) float32 grids: patient-frame coordinates of every pixel centre."""
        if self._uv is None:
            self._uv = self.uv_window((slice(0, self.s), slice(0, self.s)))
        return self._uv

    def uv_window(self, win):
        """(U, V) grids of the pixel window ``win`` (a pair of slices)."""
        ai = np.linalg.inv(self.A).astype(F32)
        x = (np.arange(win[1].start, win[1].stop, dtype=F32) + 0.5) / self.s - F32(self.t[0])
        y = (np.arange(win[0].start, win[0].stop, dtype=F32) + 0.5) / self.s - F32(self.t[1])
        U = (ai[0, 0] * x)[None, :] + (ai[0, 1] * y + 0.5)[:, None]
        V = (ai[1, 0] * x)[None, :] + (ai[1, 1] * y + 0.5)[:, None]
        return U, V

    def window(self, u, v, radius):
        """Pixel slices covering the patient-frame disc (u, v, radius), or None if off-image."""
        x, y = self.xy(u, v)
        r = self.px(radius) + 2
        x0, x1 = max(0, int(x - r)), min(self.s, int(x + r) + 2)
        y0, y1 = max(0, int(y - r)), min(self.s, int(y + r) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)


def lowfreq(rng, shape, cells=6) -> np.ndarray:
    """Smooth random field in [0, 1] of the given shape (same look at any resolution)."""
    grid = rng.random((cells, cells)).astype(F32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def bounding_box(name, mask, offset=(0, 0)):
    """(name, x, y, w, h) enclosing the non-zero pixels of ``mask`` (None if empty)."""
    m = np.ascontiguousarray(mask).astype(np.uint8, copy=False)
    x, y, w, h = cv2.boundingRect(m)
    if w == 0 or h == 0:
        return None
    return (name, float(x + offset[1]), float(y + offset[0]), float(w), float(h))


def circle_poly(u, v, ru, rv=None, n=40, wobble=None):
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 if wobble is None else wobble(th)
    return u + ru * r * np.cos(th), v + (ru if rv is None else rv) * r * np.sin(th)
