"""Procedural chest and bone radiograph phantoms.

Geometry lives in a normalised *patient frame* (``u`` to the image right, ``v`` down, both
0..1). A random similarity transform (shift, rotation, scale) maps it to pixels, so anatomy and
findings look the same at every image size. The chest image is composed from density layers::

    D = soft tissue + heart + bones - air * depth * (1 - fill) + vessel markings + dens

then windowed, gamma corrected and given quantum noise. ``fill`` (0..1) replaces lung air by
soft tissue (airspace and pleural opacities); ``dens`` adds density anywhere (nodules, lines,
calcifications, devices; negative for gas). The lung masks are the rasterised lung polygons
minus the heart and aortic knob, i.e. exactly the dark lung fields of the image.

The anatomy depends on the seed only; every finding draws from its own random stream, so the
same seed with and without a finding gives the same patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
EXTRA_FINDINGS = (
    "Enlarged_Cardiomediastinum", "Fracture", "Support_Devices",  # CheXpert
    "Bacterial", "Viral",                                          # Kermany (pediatric)
    "Bronchitis", "Bronchiolitis", "Bronchopneumonia",             # PediCXR
    "TB_Active", "TB_Latent",                                      # TBX11K (with boxes)
)
CHEST_FINDINGS = NIH_FINDINGS + EXTRA_FINDINGS


@dataclass
class ChestPhantom:
    image: np.ndarray                 # (size, size) uint8, bright = dense (bone), dark = air
    lung_left: np.ndarray             # (size, size) uint8 {0, 1}: patient's left lung (image right)
    lung_right: np.ndarray            # (size, size) uint8 {0, 1}: patient's right lung (image left)
    boxes: list = field(default_factory=list)  # [(finding, x, y, w, h)] in pixels, localised findings
    findings: tuple = ()


_F32 = np.float32
_SHIFT = 4                      # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
RIGHT, LEFT = -1, 1             # patient side -> sign of u - cx (patient right = image left)


def _rng(seed, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, stream])


def _check_size(size) -> int:
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    return int(size)


# ============================================================================ canvas

class _Canvas:
    """Similarity transform patient frame -> pixels, and lazily built patient-frame grids."""

    def __init__(self, s: int, rot_deg=0.0, scale=1.0, shift=(0.0, 0.0)):
        a = np.deg2rad(rot_deg)
        self.s, self.scale = s, float(scale)
        self.params = (rot_deg, scale, tuple(shift))
        self.A = self.scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.t = np.array([0.5 + shift[0], 0.5 + shift[1]])
        self._uv = None

    def resized(self, s: int) -> "_Canvas":
        """The same patient placement on an s x s pixel grid."""
        return _Canvas(s, *self.params)

    def xy(self, u, v) -> np.ndarray:
        """Float pixel coordinates (..., 2) of patient-frame points."""
        (a, b), (c, d) = self.A
        u = np.asarray(u, float) - 0.5
        v = np.asarray(v, float) - 0.5
        x = (a * u + b * v + self.t[0]) * self.s - 0.5
        y = (c * u + d * v + self.t[1]) * self.s - 0.5
        return np.stack(np.broadcast_arrays(x, y), -1)

    def pts(self, u, v) -> np.ndarray:
        """Fixed-point int32 pixel coordinates for cv2 drawing with ``shift=_SHIFT``."""
        return np.round(self.xy(u, v) * _ONE).astype(np.int32)

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
        ai = np.linalg.inv(self.A).astype(_F32)
        x = (np.arange(win[1].start, win[1].stop, dtype=_F32) + 0.5) / self.s - _F32(self.t[0])
        y = (np.arange(win[0].start, win[0].stop, dtype=_F32) + 0.5) / self.s - _F32(self.t[1])
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


def _lowfreq(rng, shape, cells=6) -> np.ndarray:
    """Smooth random field in [0, 1] of the given shape (same look at any resolution)."""
    grid = rng.random((cells, cells)).astype(_F32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _box(name, mask, offset=(0, 0)):
    """(name, x, y, w, h) enclosing the non-zero pixels of ``mask`` (None if empty)."""
    m = np.ascontiguousarray(mask).astype(np.uint8, copy=False)
    x, y, w, h = cv2.boundingRect(m)
    if w == 0 or h == 0:
        return None
    return (name, float(x + offset[1]), float(y + offset[0]), float(w), float(h))


def _circle_poly(u, v, ru, rv=None, n=40, wobble=None):
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 if wobble is None else wobble(th)
    return u + ru * r * np.cos(th), v + (ru if rv is None else rv) * r * np.sin(th)


# ============================================================================ geometry

@dataclass
class _Lung:
    """One lung field in the patient frame; distances ``d`` are measured from the midline."""
    side: int
    top: float          # apex v
    apex: float         # d of the apex
    W: float            # widest lateral d (inner rib margin)
    cp: float           # costophrenic angle v
    dome: float         # diaphragm dome peak v
    m: float            # medial border d (mediastinum half width)
    med_drop: float = 0.015
    taper: float = 0.025


@dataclass
class _Geo:
    child: bool
    cx: float
    lungs: dict
    ctr: float               # cardiothoracic ratio
    frac_r: float            # share of the heart width right of the midline
    h_top: float
    knob: float              # aortic knob radius
    hilum: dict              # side -> (d, v)
    air: float = 0.5         # lung air contrast
    marks: float = 0.12      # vessel marking contrast
    rib_t: float = 0.022
    rib_drop: float = 0.07
    mwide: dict = field(default_factory=lambda: {RIGHT: 0.0, LEFT: 0.0})
    thymus: bool = False
    gastric: bool = True
    fracture: tuple | None = None
    dR: float = 0.0
    dL: float = 0.0

    def finalize(self):
        width = self.lungs[RIGHT].W + self.lungs[LEFT].W
        self.dR = self.ctr * width * self.frac_r
        self.dL = self.ctr * width - self.dR


def _sample_geometry(rng, child: bool) -> _Geo:
    """Normal patient anatomy, varied by seed."""
    u = rng.uniform
    if child:
        W, top, cp, dome_gap, ctr = u(0.33, 0.36), u(0.19, 0.22), u(0.74, 0.78), u(0.06, 0.09), u(0.42, 0.48)
    else:
        W, top, cp, dome_gap, ctr = u(0.31, 0.345), u(0.13, 0.17), u(0.77, 0.82), u(0.08, 0.12), u(0.38, 0.47)
    lungs = {}
    for side in (RIGHT, LEFT):
        c = cp + u(-0.01, 0.01)
        dome = c - dome_gap + (0.0 if side == RIGHT else u(0.01, 0.03))
        lungs[side] = _Lung(side, top + u(-0.01, 0.01), u(0.13, 0.16), W + u(-0.01, 0.01), c, dome,
                            u(0.045, 0.058))
    h_top = u(0.40, 0.44) if not child else u(0.42, 0.46)
    g = _Geo(child, 0.5 + u(-0.01, 0.01), lungs, ctr, u(0.30, 0.37), h_top,
             0.0 if child else u(0.022, 0.032),
             {RIGHT: (u(0.09, 0.11), h_top + u(0.02, 0.05)), LEFT: (u(0.10, 0.12), h_top + u(0.0, 0.03))},
             air=u(0.56, 0.68), marks=u(0.10, 0.15),
             rib_t=u(0.012, 0.015) if child else u(0.019, 0.024),
             rib_drop=u(0.03, 0.05) if child else u(0.06, 0.09),
             thymus=bool(child and rng.random() < 0.5), gastric=bool(rng.random() < 0.6))
    return g


def _mediastinum_d(g: _Geo, L: _Lung, v):
    """Medial lung border d at height v (widened by Enlarged_Cardiomediastinum)."""
    a, b = L.top + 0.02, g.h_top + 0.06
    bump = np.sin(np.pi * np.clip((v - a) / (b - a), 0, 1)) ** 0.7
    return L.m + g.mwide[L.side] * bump


def _lung_outline(g: _Geo, L: _Lung, n=48):
    """Lung polygon (u, v) arrays: lateral border, diaphragm, medial border."""
    t = np.linspace(0, 1, n)
    q = np.clip(t / 0.55, 0, 1)
    d_lat = L.apex + (L.W - L.apex) * np.sqrt(1 - (1 - q) ** 2) - L.taper * np.clip((t - 0.6) / 0.4, 0, 1) ** 2
    v_lat = L.top + (L.cp - L.top) * t
    w = np.linspace(0, 1, n)[1:]
    wp = 0.45
    m_low = _mediastinum_d(g, L, L.dome + L.med_drop)
    d_dia = d_lat[-1] + (m_low - d_lat[-1]) * w
    v_dia = np.where(w < wp, L.dome + (L.cp - L.dome) * np.clip((wp - w) / wp, 0, 1) ** 2.2,
                     L.dome + L.med_drop * ((w - wp) / (1 - wp)) ** 2)
    t2 = np.linspace(1, 0, n)[1:-1]
    v_med = L.top + (v_dia[-1] - L.top) * t2
    q2 = np.clip(t2 / 0.2, 0, 1)
    d_med = L.apex - (L.apex - _mediastinum_d(g, L, v_med)) * np.sqrt(1 - (1 - q2) ** 2)
    d = np.concatenate([d_lat, d_dia, d_med])
    v = np.concatenate([v_lat, v_dia, v_med])
    return g.cx + L.side * d, v


def _lateral_d(L: _Lung, v):
    """Lateral lung border d at height v (same curve as in _lung_outline)."""
    t = np.clip((v - L.top) / (L.cp - L.top), 0, 1)
    q = np.clip(t / 0.55, 0, 1)
    return L.apex + (L.W - L.apex) * np.sqrt(1 - (1 - q) ** 2) - L.taper * np.clip((t - 0.6) / 0.4, 0, 1) ** 2


def _heart_outline(g: _Geo, n=40):
    """Cardiac silhouette polygon: right border down, left border up (bottom hidden in abdomen)."""
    Lr, Ll = g.lungs[RIGHT], g.lungs[LEFT]
    bottom = max(Lr.dome, Ll.dome) + 0.03
    v = np.linspace(g.h_top, bottom, n)
    tr = (v - g.h_top) / (Lr.dome - g.h_top)
    dr = 0.035 + (g.dR - 0.035) * np.sin(np.pi / 2 * np.clip(tr / 0.7, 0, 1)) ** 0.8
    vl = v - 0.02
    tl = (vl - (g.h_top - 0.02)) / (Ll.dome - g.h_top + 0.02)
    dl = 0.035 + (g.dL - 0.035) * np.sin(np.pi / 2 * np.clip(tl / 0.8, 0, 1)) ** 1.3
    u = np.concatenate([g.cx - dr, (g.cx + dl)[::-1]])
    vv = np.concatenate([v, vl[::-1]])
    return u, vv


# ============================================================================ scene

class _Scene:
    """Everything a finding needs: canvas, geometry, lung masks/polygons and the layers."""

    n_lateral, n_diaphragm = 48, 47          # point counts of _lung_outline's first two parts

    def __init__(self, cv: _Canvas, g: _Geo):
        self.cv, self.g, self.s = cv, g, cv.s
        self.low = cv.resized(min(cv.s, 256))   # grid for smooth fields
        shape = (cv.s, cv.s)
        self.fill = np.zeros(shape, _F32)
        self.dens = np.zeros(shape, _F32)
        self.keep = None            # vessel-marking multiplier (pneumothorax)
        self.air_floor = None       # minimum air depth (pneumothorax)
        self._dist = None
        self.boxes = []
        self.polys = {side: np.stack(_lung_outline(g, g.lungs[side]), -1).astype(_F32) for side in (RIGHT, LEFT)}
        self.heart = np.stack(_heart_outline(g), -1).astype(_F32)
        self.knob = (np.stack(_circle_poly(g.cx + 0.055, g.h_top - 0.055, g.knob), -1).astype(_F32)
                     if g.knob > 0 else None)
        self.mask = self.lung_masks(cv)
        self.lung = self.mask[RIGHT] | self.mask[LEFT]

    def lung_masks(self, cv: _Canvas) -> dict:
        """Exact {0,1} lung masks on the canvas: lung polygons minus heart and aortic knob."""
        med = np.zeros((cv.s, cv.s), np.uint8)
        cv2.fillPoly(med, [cv.pts(*self.heart.T)], 1, cv2.LINE_8, _SHIFT)
        if self.knob is not None:
            cv2.fillPoly(med, [cv.pts(*self.knob.T)], 1, cv2.LINE_8, _SHIFT)
        out = {}
        for side in (RIGHT, LEFT):
            m = np.zeros((cv.s, cv.s), np.uint8)
            cv2.fillPoly(m, [cv.pts(*self.polys[side].T)], 1, cv2.LINE_8, _SHIFT)
            m[med > 0] = 0
            out[side] = m
        return out

    @property
    def dist(self) -> np.ndarray:
        """Pixel distance of lung pixels to the lung border (full resolution, built on demand)."""
        if self._dist is None:
            self._dist = cv2.distanceTransform(self.lung, cv2.DIST_L2, 3)
        return self._dist

    def up(self, a: np.ndarray) -> np.ndarray:
        """Resize a smooth low-resolution field to the image size."""
        return a if a.shape[0] == self.s else cv2.resize(a, (self.s, self.s), interpolation=cv2.INTER_LINEAR)

    def clearance(self, side, u, v) -> float:
        """Patient-frame distance of (u, v) inside the lung field (negative outside)."""
        p = (float(u), float(v))
        d = cv2.pointPolygonTest(self.polys[side], p, True)
        d = min(d, -cv2.pointPolygonTest(self.heart, p, True))
        if self.knob is not None:
            d = min(d, -cv2.pointPolygonTest(self.knob, p, True))
        return d

    def sample_point(self, rng, r, side=None, zone=(0.0, 1.0), lateral=(0.0, 1.0)):
        """Random lung point (side, u, v) at least ``r`` inside the lung field; ``zone`` and
        ``lateral`` are fractions of the lung height (apex..costophrenic) and width (medial..lateral)."""
        best = None
        for i in range(400):
            sd = side if side is not None else (RIGHT if rng.random() < 0.5 else LEFT)
            L = self.g.lungs[sd]
            v = L.top + (L.cp - L.top) * rng.uniform(*zone)
            d = L.m + (L.W - L.m) * rng.uniform(*lateral)
            u = self.g.cx + sd * d
            c = self.clearance(sd, u, v)
            need = r * (0.97 ** (i // 20))       # relax slowly if the lung is crowded
            if c >= need:
                return sd, u, v
            if best is None or c > best[0]:
                best = (c, sd, u, v)
        return best[1:]

    def add_box(self, name, mask, offset=(0, 0)):
        b = _box(name, mask, offset)
        if b is not None:
            self.boxes.append(b)


# ============================================================================ anatomy

def _body(sc: _Scene) -> np.ndarray:
    """Soft-tissue density (low resolution): trunk, neck, shoulders and arms, thicker centrally."""
    g, cv = sc.g, sc.low
    mask = np.zeros((cv.s, cv.s), np.uint8)
    halves = []
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        W = L.W
        d = np.array([0.075, 0.085, 0.2, W + 0.05, W + 0.085, W + 0.065, W + 0.075, W + 0.06, W + 0.04])
        v = np.array([-0.05, 0.06, L.top - 0.045, L.top - 0.05, L.top + 0.03, 0.35, 0.6, 0.85, 1.05])
        halves.append((g.cx + side * d, v))
        arm_d = np.array([W + 0.06, W + 0.17, W + 0.27, W + 0.30, W + 0.15, W + 0.10])
        arm_v = np.array([L.top - 0.07, L.top - 0.08, L.top + 0.05, 0.8, 0.8, L.top + 0.15])
        cv2.fillPoly(mask, [cv.pts(g.cx + side * arm_d, arm_v)], 1, cv2.LINE_8, _SHIFT)
    trunk_u = np.concatenate([halves[0][0], halves[1][0][::-1]])
    trunk_v = np.concatenate([halves[0][1], halves[1][1][::-1]])
    cv2.fillPoly(mask, [cv.pts(trunk_u, trunk_v)], 1, cv2.LINE_8, _SHIFT)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    thick = 1.0 - np.exp(dist * _F32(-1.0 / cv.px(0.06)))
    return _F32(0.04) + _F32(0.7) * thick


def _air_depth(sc: _Scene) -> np.ndarray:
    """Relative air thickness in the lungs (low resolution): soft edges, less at the apex."""
    g, cv = sc.g, sc.low
    m = sc.lung_masks(cv)
    dist = cv2.distanceTransform(m[RIGHT] | m[LEFT], cv2.DIST_L2, 3)
    A = 1.0 - np.exp(dist * _F32(-1.0 / cv.px(0.035)))
    _, V = cv.uv
    top = min(g.lungs[RIGHT].top, g.lungs[LEFT].top)
    return A * (_F32(0.72) + _F32(0.28) * np.clip((V - top) * _F32(1 / 0.14), 0, 1))


def _heart_density(sc: _Scene) -> np.ndarray:
    """Extra density of heart and great vessels (the mediastinum is brighter than tissue)."""
    g, cv, s = sc.g, sc.cv, sc.s
    lay = np.zeros((s, s), np.uint8)
    cv2.fillPoly(lay, [cv.pts(*sc.heart.T)], 110, _AA, _SHIFT)
    if sc.knob is not None:
        cv2.fillPoly(lay, [cv.pts(*sc.knob.T)], 90, _AA, _SHIFT)
    if g.thymus:   # sail-shaped thymus over the right upper mediastinum
        th = np.zeros((s, s), np.uint8)
        u = g.cx - np.array([0.03, 0.05, 0.15, 0.06, 0.03])
        v = np.array([0.24, 0.27, g.h_top - 0.02, g.h_top + 0.02, g.h_top])
        cv2.fillPoly(th, [cv.pts(u, v)], 255, _AA, _SHIFT)
        sc.fill += th.astype(_F32) * _F32(0.6 / 255)
    k = max(3, int(cv.px(0.02)) | 1)
    return cv2.blur(lay, (k, k)).astype(_F32) * _F32(0.035 / 110)


def _blur(img, sigma):
    if sigma < 0.3:
        return img.astype(_F32)
    return cv2.GaussianBlur(img.astype(_F32), (0, 0), float(sigma))


def _fill_from_layer(sc, layer, scale):
    sc.fill += layer.astype(_F32) * _F32(scale)


def _rib_curves(g: _Geo, side: int, rng):
    """Posterior ribs (d, v arrays, one row per rib) and the matching anterior ribs."""
    L = g.lungs[side]
    n = 11
    sp = (L.cp - L.top + 0.06) / (n - 0.5)
    uu = np.linspace(0, 1, 24)[None, :]
    i = np.arange(n)[:, None]
    v0 = L.top - 0.05 + i * sp + rng.uniform(-0.004, 0.004, (n, 1))
    d = 0.035 + uu * (L.W + 0.035 - 0.035 * i / n)
    v = v0 - 0.02 * np.sin(np.pi * uu * 0.9) + g.rib_drop * uu ** 2.2
    a = np.linspace(0, 1, 16)[None, :]
    da = d[:, -1:] - a * (d[:, -1:] - 0.11)
    va = v[:, -1:] + (0.10 if not g.child else 0.06) * a ** 1.3 - 0.01 * np.sin(np.pi * a)
    return d, v, da, va


def _bones(sc: _Scene, rng) -> np.ndarray:
    """Ribs, clavicles, spine and humeri as a density layer (ribs fade outside the lungs)."""
    g, cv, s = sc.g, sc.cv, sc.s
    post, ant, other, spine = (np.zeros((s, s), np.uint8) for _ in range(4))
    t = g.rib_t
    ribs, ant_ribs = [], []
    for side in (RIGHT, LEFT):
        d, v, da, va = _rib_curves(g, side, rng)
        if g.fracture is not None and g.fracture[0] == side:
            i = g.fracture[1]
            for dd, vv in _fracture_pieces(sc, d[i], v[i], g.fracture, side):
                ribs.append(cv.pts(g.cx + side * dd, vv))
            d, v = np.delete(d, i, 0), np.delete(v, i, 0)
        ribs.extend(cv.pts(g.cx + side * d, v))
        ant_ribs.extend(cv.pts(g.cx + side * da, va))
        # cortical edges of the posterior ribs
        edges = np.concatenate([cv.pts(g.cx + side * d, v - t / 2), cv.pts(g.cx + side * d, v + t / 2)])
        cv2.polylines(post, list(edges), False, 255, cv.th(0.0035), _AA, _SHIFT)
    cv2.polylines(post, ribs, False, 150, cv.th(t), _AA, _SHIFT)
    cv2.polylines(ant, ant_ribs, False, 255, cv.th(t * 0.8), _AA, _SHIFT)
    _clavicles_humeri(sc, other)
    _spine(sc, spine)
    D = cv2.addWeighted(post, 0.13 / 255, ant, 0.035 / 255, 0.0, dtype=cv2.CV_32F)
    D = cv2.scaleAdd(other.astype(_F32), 0.16 / 255, D)
    D *= _F32(0.3) + _F32(0.7) * sc.up(_soft(sc.lung_masks(sc.low), sc.low.px(0.03)))
    return cv2.scaleAdd(spine.astype(_F32), 0.06 / 255, D)


def _soft(masks: dict, radius) -> np.ndarray:
    """Box-blurred float union of {0,1} masks."""
    k = max(3, int(radius) | 1)
    return cv2.blur((masks[RIGHT] | masks[LEFT]).astype(_F32), (k, k))


def _clavicles_humeri(sc: _Scene, lay):
    g, cv = sc.g, sc.cv
    c = np.linspace(0, 1, 20)
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        d = 0.05 + c * (L.W * 0.95)
        v = L.top + 0.045 - c * 0.075 + 0.012 * np.sin(2 * np.pi * c)
        cv2.polylines(lay, [cv.pts(g.cx + side * d, v)], False, 200, cv.th(0.018 if g.child else 0.026), _AA, _SHIFT)
        head = cv.pts(g.cx + side * (L.W + 0.17), L.top - 0.005)
        cv2.line(lay, tuple(head), tuple(cv.pts(g.cx + side * (L.W + 0.22), 0.8)), 170, cv.th(0.05), _AA, _SHIFT)
        cv2.circle(lay, tuple(head), int(cv.px(0.055 if not g.child else 0.04) * _ONE), 200, -1, _AA, _SHIFT)


def _spine(sc: _Scene, lay):
    """Vertebral bodies with pedicle rings."""
    g, cv = sc.g, sc.cv
    per = 0.045 if not g.child else 0.038
    v0 = np.arange(-1, int(1.0 / per) + 2) * per + 0.01
    uu = g.cx + np.array([-0.032, 0.032, 0.034, -0.034])
    vv = v0[:, None] + np.array([0.0, 0.0, per * 0.82, per * 0.82])
    cv2.fillPoly(lay, list(cv.pts(np.broadcast_to(uu, vv.shape), vv)), 150, _AA, _SHIFT)
    axes = (int(cv.px(0.006) * _ONE), int(cv.px(0.01) * _ONE))
    for sd in (-1, 1):
        for c in cv.pts(np.full(v0.shape, g.cx + sd * 0.025), v0 + per * 0.4):
            cv2.ellipse(lay, tuple(c), axes, 0, 0, 360, 160, cv.th(0.003), _AA, _SHIFT)


def _fracture_pieces(sc, d, v, frac, side):
    """Split a rib polyline at the fracture with a gap and a step; record the box."""
    _, _, ub, step, gap = frac
    uu = np.linspace(0, 1, len(d))
    a, b = uu < ub - gap, uu > ub + gap
    cv, g = sc.cv, sc.g
    bu = g.cx + side * np.interp(ub, uu, d)
    bv = np.interp(ub, uu, v) + step / 2
    r = 0.025 + abs(step)
    x, y = cv.xy(np.array([bu - r, bu + r, bu - r, bu + r]), np.array([bv - r, bv - r, bv + r, bv + r])).T
    x0, x1 = np.clip([x.min(), x.max()], 0, sc.s)
    y0, y1 = np.clip([y.min(), y.max()], 0, sc.s)
    if x1 > x0 and y1 > y0:
        sc.boxes.append(("Fracture", float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
    return [(d[a], v[a]), (d[b], v[b] + step)]


def _vessels(sc: _Scene, rng) -> np.ndarray:
    """Branching pulmonary vessel markings fanning out from the hila (uint8 layer)."""
    g, cv, s = sc.g, sc.cv, sc.s
    lay = np.zeros((s, s), np.uint8)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        ang = np.deg2rad(np.linspace(-65, 65, 7) + rng.uniform(-8, 8, 7))
        x = np.full(7, g.cx + side * hd)
        y = np.full(7, hv)
        length, width = 0.06, 0.0075
        for depth in range(5):
            bend = rng.normal(0, 0.25, x.size)
            xm = x + side * np.cos(ang) * length * 0.5
            ym = y + np.sin(ang) * length * 0.5
            x1 = xm + side * np.cos(ang + bend) * length * rng.uniform(0.3, 0.7, x.size)
            y1 = ym + np.sin(ang + bend) * length * rng.uniform(0.3, 0.7, x.size)
            segs = cv.pts(np.stack([x, xm, x1], 1), np.stack([y, ym, y1], 1))
            cv2.polylines(lay, list(segs), False, int(240 - 35 * depth), cv.th(width), _AA, _SHIFT)
            spread = np.deg2rad(rng.uniform(15, 35, x.size))
            keep = rng.random(2 * x.size) < (0.95 if depth < 2 else 0.8)
            ang = (np.concatenate([ang + bend - spread, ang + bend + spread]) + rng.normal(0, 0.1, 2 * x.size))[keep]
            ang = np.clip(ang, -1.6, 1.6)
            x, y = np.tile(x1, 2)[keep], np.tile(y1, 2)[keep]
            length *= 0.78
            width *= 0.72
    return lay


def _trachea(sc: _Scene) -> np.ndarray:
    """Trachea and main bronchi air column (uint8 layer, density to subtract)."""
    g, cv, s = sc.g, sc.cv, sc.s
    lay = np.zeros((s, s), np.uint8)
    car = g.h_top - 0.03
    cv2.line(lay, tuple(cv.pts(g.cx, -0.02)), tuple(cv.pts(g.cx + 0.004, car)), 255,
             cv.th(0.026 if not g.child else 0.02), _AA, _SHIFT)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        cv2.line(lay, tuple(cv.pts(g.cx + 0.004, car)), tuple(cv.pts(g.cx + side * hd * 0.8, hv - 0.01)),
                 200, cv.th(0.015), _AA, _SHIFT)
    return lay


def _gastric_bubble(sc: _Scene):
    g, cv = sc.g, sc.cv
    L = g.lungs[LEFT]
    u, v = _circle_poly(g.cx + 0.14, L.dome + 0.06, 0.045, 0.025)
    win = cv.window(g.cx + 0.14, L.dome + 0.06, 0.05)
    if win is None:
        return
    lay = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), np.uint8)
    off = np.array([win[1].start, win[0].start]) * _ONE
    cv2.fillPoly(lay, [cv.pts(u, v) - off], 255, _AA, _SHIFT)
    sc.dens[win] -= lay.astype(_F32) * _F32(0.16 / 255)


# ============================================================================ findings
# Each finding has an optional geometry modifier (called before the anatomy is drawn) and an
# overlay (called after). Both receive the finding's own random generator.

def _mod_atelectasis(g, rng, state):
    side = RIGHT if rng.random() < 0.5 else LEFT
    L = g.lungs[side]
    L.W *= 0.94
    L.dome -= 0.03
    L.cp -= 0.025
    state["side"] = side


def _mod_cardiomegaly(g, rng, state):
    g.ctr = rng.uniform(0.58, 0.66) if g.child else rng.uniform(0.55, 0.65)
    g.h_top -= 0.02


def _mod_emphysema(g, rng, state):
    for L in g.lungs.values():
        L.W *= 1.05
        L.top -= 0.015
        L.cp += 0.035
        L.dome = L.cp - rng.uniform(0.015, 0.03)
        L.med_drop = 0.005
    g.air *= 1.22
    g.marks *= 0.4
    if g.ctr < 0.5:     # a long narrow heart, unless it is enlarged
        g.ctr *= 0.9


def _mod_fibrosis(g, rng, state):
    for L in g.lungs.values():
        L.W *= 0.96
        L.dome -= 0.015
        L.cp -= 0.015


def _mod_hyperinflation(strength):
    def mod(g, rng, state):
        for L in g.lungs.values():
            L.W *= 1 + 0.03 * strength
            L.cp += 0.035 * strength
            L.dome = L.cp - (L.cp - L.dome) * (1 - 0.5 * strength)
    return mod


def _mod_mediastinum(g, rng, state):
    g.mwide = {RIGHT: rng.uniform(0.05, 0.08), LEFT: rng.uniform(0.04, 0.07)}
    if g.knob > 0:
        g.knob += 0.01


def _mod_fracture(g, rng, state):
    side = RIGHT if rng.random() < 0.5 else LEFT
    step = rng.uniform(0.018, 0.028) * (1 if rng.random() < 0.5 else -1)
    g.fracture = (side, int(rng.integers(2, 8)), rng.uniform(0.45, 0.75), step, rng.uniform(0.008, 0.012))


# ---------------------------------------------------------------------------- overlays

def _sphere_patch(sc, u, v, r, wobble=None):
    """Window slices and a projected-sphere profile (0..1) of radius r (optionally lobulated)."""
    win = sc.cv.window(u, v, r * 1.3)
    if win is None:
        return None, None
    U, V = sc.cv.uv_window(win)
    du, dv = U - _F32(u), V - _F32(v)
    rad = np.sqrt(du * du + dv * dv)
    R = _F32(r) if wobble is None else (r * wobble(np.arctan2(dv, du))).astype(_F32)
    rho = rad / R
    soft = _F32(1.5 / max(sc.cv.px(r), 1.0))            # ~1.5 px anti-aliased edge
    prof = np.sqrt(np.clip(1 - rho * rho, 0, 1)) * 0.6 + 0.4
    prof *= np.clip((1 - rho) / soft + 0.5, 0, 1)
    return win, prof.astype(_F32)


def _wobble(rng, amp):
    k = rng.integers(2, 5, 3)
    a = rng.uniform(0, amp, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    return lambda th: 1 + sum(ai * np.cos(ki * th + pi) for ai, ki, pi in zip(a, k, ph))


def _blob_patch(sc, rng, u0, v0, spread, n, smin, smax, texture):
    """Patchy opacity: a cluster of Gaussian blobs modulated by smooth noise (peak ~1)."""
    win = sc.cv.window(u0, v0, spread + 2.5 * smax)
    if win is None:
        return None, None
    Uw, Vw = sc.cv.uv_window(win)
    acc = np.zeros(Uw.shape, _F32)
    for _ in range(n):
        bu, bv = u0 + rng.uniform(-spread, spread), v0 + rng.uniform(-spread, spread) * 0.8
        su, sv = rng.uniform(smin, smax), rng.uniform(smin, smax)
        acc += np.exp(-0.5 * (((Uw - _F32(bu)) / _F32(su)) ** 2 + ((Vw - _F32(bv)) / _F32(sv)) ** 2))
    acc = np.clip(acc, 0, 1.3) / 1.3
    if texture:
        acc *= (1 - texture) + texture * _lowfreq(rng, acc.shape, 7)
    return win, acc / max(float(acc.max()), 1e-6)


def _patchy(sc, rng, name, u, v, spread, n, smin, smax, amp, texture, bronchograms=False):
    win, p = _blob_patch(sc, rng, u, v, spread, n, smin, smax, texture)
    if win is None:
        return
    p *= _F32(amp)
    if bronchograms:
        _air_bronchograms(sc, rng, win, p, u, v, spread)
    sc.fill[win] += p
    sc.add_box(name, (p > 0.3 * amp) & (sc.lung[win] > 0), (win[0].start, win[1].start))


def _air_bronchograms(sc, rng, win, p, u, v, spread):
    """Dark branching air tubes inside an airspace opacity (reduce the fill along them)."""
    cv = sc.cv
    h, w = p.shape
    lay = np.zeros((h, w), np.uint8)
    off = np.array([win[1].start, win[0].start]) * _ONE
    side = 1 if u > sc.g.cx else -1
    for _ in range(rng.integers(2, 5)):
        a = rng.uniform(-0.8, 0.8)
        x0, y0 = u - side * spread * 0.6, v + rng.uniform(-spread, spread) * 0.5
        L = spread * rng.uniform(0.8, 1.4)
        x1, y1 = x0 + side * np.cos(a) * L, y0 + np.sin(a) * L
        p0, p1 = cv.pts(x0, y0) - off, cv.pts(x1, y1) - off
        cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(0.005), _AA, _SHIFT)
        b = a + rng.choice([-0.5, 0.5])
        p2 = cv.pts(x1 + side * np.cos(b) * L * 0.5, y1 + np.sin(b) * L * 0.5) - off
        cv2.line(lay, tuple(p1), tuple(p2), 255, cv.th(0.0035), _AA, _SHIFT)
    p *= 1 - _blur(lay, cv.px(0.002)) * _F32(0.4 / 255)


def _ov_atelectasis(sc, rng, state):
    g, cv = sc.g, sc.cv
    side = state["side"]
    L = g.lungs[side]
    lay = np.zeros((sc.s, sc.s), np.uint8)
    if rng.random() < 0.5:   # plate-like (discoid) band
        _, u, v = sc.sample_point(rng, 0.03, side, zone=(0.55, 0.8), lateral=(0.35, 0.65))
        a = np.deg2rad(rng.uniform(-20, 10))
        half = rng.uniform(0.05, 0.08)
        p0 = cv.pts(u - side * np.cos(a) * half, v - np.sin(a) * half)
        p1 = cv.pts(u + side * np.cos(a) * half, v + np.sin(a) * half)
        cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(rng.uniform(0.012, 0.02)), _AA, _SHIFT)
    else:                    # wedge: apex to the hilum, base on the lateral pleura
        hd, hv = g.hilum[side]
        vb = rng.uniform(hv + 0.05, L.dome - 0.06)
        hw = rng.uniform(0.04, 0.06)
        wd = _lateral_d(L, np.array([vb - hw, vb + hw])) + 0.01
        u = g.cx + side * np.array([hd + 0.05, wd[0], wd[1]])
        v = np.array([hv + 0.03, vb - hw, vb + hw])
        cv2.fillPoly(lay, [cv.pts(u, v)], 255, _AA, _SHIFT)
    lay = lay * sc.mask[side]
    _fill_from_layer(sc, lay, rng.uniform(0.75, 0.9) / 255)
    sc.add_box("Atelectasis", lay > 60)


def _ov_cardiomegaly(sc, rng, state):
    g = sc.g
    h = sc.heart
    Lr, Ll = g.lungs[RIGHT], g.lungs[LEFT]
    visible = np.where(h[:, 0] < g.cx, g.cx - h[:, 0] > Lr.m, h[:, 0] - g.cx > Ll.m)   # beyond the mediastinum
    keep = visible & (h[:, 1] <= max(Lr.dome, Ll.dome) + Ll.med_drop)
    xy = sc.cv.xy(h[keep, 0], h[keep, 1])
    x0, y0 = np.clip(xy.min(0), 0, sc.s)
    x1, y1 = np.clip(xy.max(0), 0, sc.s)
    sc.boxes.append(("Cardiomegaly", float(x0), float(y0), float(x1 - x0), float(y1 - y0)))


def _ov_effusion(sc, rng, state):
    g = sc.g
    U, V = sc.cv.uv
    sides = [RIGHT, LEFT] if rng.random() < 0.3 else [RIGHT if rng.random() < 0.5 else LEFT]
    for side in sides:
        L = g.lungs[side]
        level = rng.uniform(L.dome - 0.11, L.dome + 0.005)
        rise = rng.uniform(0.04, 0.08)
        dd = _F32(side) * (U - _F32(g.cx))
        lf = np.clip((dd - _F32(L.m)) * _F32(1 / (L.W - L.m)), 0, 1)
        men = _F32(level) - _F32(rise) * lf * lf          # meniscus: fluid climbs the lateral wall
        f = np.clip((V - men) * _F32(1 / 0.012), 0, 1) * sc.mask[side]
        sc.fill += f
        sc.dens += f * _F32(0.08)
        sc.add_box("Effusion", f > 0.5)


def _ov_infiltration(sc, rng, state):
    for _ in range(1 + (rng.random() < 0.35)):
        _, u, v = sc.sample_point(rng, 0.04, zone=(0.15, 0.9))
        _patchy(sc, rng, "Infiltration", u, v, rng.uniform(0.03, 0.05), rng.integers(3, 7),
                0.018, 0.035, rng.uniform(0.4, 0.55), 0.6)


def _ov_mass(sc, rng, state):
    r = rng.uniform(0.06, 0.10)
    _, u, v = sc.sample_point(rng, r * 0.9, zone=(0.1, 0.85))
    win, prof = _sphere_patch(sc, u, v, r, _wobble(rng, 0.06))
    if win is None:
        return
    sc.fill[win] += prof
    sc.dens[win] += prof * _F32(0.08)
    sc.add_box("Mass", prof > 0.2, (win[0].start, win[1].start))


def _ov_nodule(sc, rng, state):
    n = 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
    for _ in range(n):
        r = rng.uniform(0.015, 0.03)
        _, u, v = sc.sample_point(rng, r * 1.2, zone=(0.1, 0.9))
        win, prof = _sphere_patch(sc, u, v, r)
        if win is None:
            continue
        sc.fill[win] += prof
        sc.dens[win] += prof * _F32(0.12)
        sc.add_box("Nodule", prof > 0.2, (win[0].start, win[1].start))


def _ov_pneumonia(sc, rng, state):
    for _ in range(1 + (rng.random() < 0.25)):
        _, u, v = sc.sample_point(rng, 0.05, zone=(0.3, 0.9))
        _patchy(sc, rng, "Pneumonia", u, v, rng.uniform(0.035, 0.055), rng.integers(4, 8),
                0.025, 0.045, rng.uniform(0.7, 0.85), 0.35, bronchograms=True)


def _ov_pneumothorax(sc, rng, state):
    g, cv = sc.g, sc.cv
    side = RIGHT if rng.random() < 0.5 else LEFT
    L = g.lungs[side]
    hd, hv = g.hilum[side]
    hu = g.cx + side * hd
    f0 = rng.uniform(0.65, 0.85)
    vlim = L.top + (L.cp - L.top) * rng.uniform(0.6, 0.85)
    pu, pv = sc.polys[side].T.astype(float)
    k = np.clip((vlim - pv) / (vlim - L.top), 0, 1) ** 0.6
    k[sc.n_lateral + sc.n_diaphragm:] *= pv[sc.n_lateral + sc.n_diaphragm:] < L.top + 0.05   # medial border stays
    f = 1 - (1 - f0) * k
    cu, cvv = hu + f * (pu - hu), hv + f * (pv - hv)
    col = np.zeros((sc.s, sc.s), np.uint8)
    cv2.fillPoly(col, [cv.pts(cu, cvv)], 1, cv2.LINE_8, _SHIFT)
    ptx = sc.mask[side] & (1 - col)
    if sc.keep is None:
        sc.keep = np.ones((sc.s, sc.s), _F32)
        sc.air_floor = np.zeros((sc.s, sc.s), _F32)
    sc.keep[ptx > 0] = 0
    np.maximum(sc.air_floor, ptx.astype(_F32) * _F32(0.85), out=sc.air_floor)
    line = np.zeros((sc.s, sc.s), np.uint8)
    cv2.polylines(line, [cv.pts(cu, cvv)], True, 255, cv.th(0.004), _AA, _SHIFT)
    near = cv2.dilate(ptx, np.ones((3, 3), np.uint8), iterations=max(1, int(cv.px(0.006))))
    sc.dens += (line * near * sc.mask[side]).astype(_F32) * _F32(0.3 / 255)
    sc.add_box("Pneumothorax", ptx)


def _lobe(sc, rng, side, whole=True):
    """Float mask (0..1) of a lobe (or a segment of it) of one lung, soft where not fissural."""
    g = sc.g
    L = g.lungs[side]
    U, V = sc.cv.uv
    hd, hv = g.hilum[side]
    dd = _F32(side) * (U - _F32(g.cx))
    lf = (dd - _F32(L.m)) * _F32(1 / (L.W - L.m))
    lobes = ["upper", "lower"] + (["middle"] if side == RIGHT else ["lingula"])
    lobe = lobes[rng.integers(len(lobes))]
    fis = hv + rng.uniform(-0.04, 0.0)
    soft = _F32(1 / 0.02)
    if lobe == "upper":
        r = np.clip((_F32(fis) - V) * (soft * 3), 0, 1)                 # sharp fissure below
    elif lobe == "lower":
        top = _F32(hv + 0.04) - _F32(0.06) * lf
        r = np.clip((V - top) * soft, 0, 1)
    else:                                                            # middle lobe / lingula
        r = np.clip((V - _F32(fis)) * (soft * 3), 0, 1) * np.clip((_F32(0.75) - lf) * _F32(8), 0, 1)
    r *= sc.mask[side]
    if not whole:   # segmental: intersect with a large ellipse inside the lobe
        ys, xs = np.nonzero(r > 0.5)
        if len(xs):
            i = rng.integers(len(xs))
            cu, cvv = U[ys[i], xs[i]], V[ys[i], xs[i]]
            rr = rng.uniform(0.07, 0.11)
            e = ((U - cu) ** 2 + (V - cvv) ** 2) * _F32(1 / rr ** 2)
            r *= np.clip((1 - e) * 4, 0, 1)
    return r


def _ov_lobar(name, whole, amp):
    def overlay(sc, rng, state):
        for _ in range(8):     # retry if the drawn lobe/segment is hidden (e.g. behind a big heart)
            side = RIGHT if rng.random() < 0.5 else LEFT
            r = _lobe(sc, rng, side, whole)
            r *= _F32(rng.uniform(*amp)) * ((0.85 + 0.15 * _lowfreq(rng, r.shape, 5)))
            bb = _box(name, r > 0.3)
            if bb is not None and bb[3] * bb[4] > (0.04 * sc.s) ** 2:
                break
        if bb is None:
            return
        _, x, y, w, h = bb
        win = (slice(int(y), int(y + h)), slice(int(x), int(x + w)))
        u, v = sc.cv.uv[0][win].mean(), sc.cv.uv[1][win].mean()
        _air_bronchograms(sc, rng, win, r[win], u, v, 0.05)
        sc.fill += r
        sc.boxes.append(bb)
    return overlay


def _ov_edema(sc, rng, state):
    g, cv = sc.g, sc.cv
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        u0, v0 = g.cx + side * (hd + 0.03), hv + 0.02
        win = cv.window(u0, v0, 0.3)
        su, sv = rng.uniform(0.07, 0.09), rng.uniform(0.09, 0.12)
        Uw, Vw = cv.uv_window(win)
        b = np.exp(-0.5 * (((Uw - _F32(u0)) / _F32(su)) ** 2 + ((Vw - _F32(v0)) / _F32(sv)) ** 2))
        b *= 0.7 + 0.3 * _lowfreq(rng, b.shape, 6)
        sc.fill[win] += b * _F32(rng.uniform(0.55, 0.7))
    lay = np.zeros((sc.s, sc.s), np.uint8)   # Kerley B lines at the lateral bases
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        for v in rng.uniform(L.cp - 0.17, L.cp - 0.04, rng.integers(5, 10)):
            d0 = _lateral_d(L, v) - 0.004
            ln = rng.uniform(0.02, 0.035)
            p0, p1 = cv.pts(g.cx + side * d0, v), cv.pts(g.cx + side * (d0 - ln), v + rng.uniform(-0.003, 0.003))
            cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(0.003), _AA, _SHIFT)
    sc.dens += (lay * sc.lung).astype(_F32) * _F32(0.2 / 255)


def _ov_emphysema(sc, rng, state):
    for _ in range(rng.integers(0, 3)):            # thin-walled bullae in the upper zones
        r = rng.uniform(0.025, 0.045)
        side, u, v = sc.sample_point(rng, r, zone=(0.05, 0.4))
        win, prof = _sphere_patch(sc, u, v, r)
        if win is None:
            continue
        inside = (prof > 0.2).astype(np.uint8)
        ring = inside - cv2.erode(inside, np.ones((3, 3), np.uint8))
        sc.dens[win] -= inside * _F32(0.05)
        sc.dens[win] += ring * _F32(0.06) * sc.lung[win]


def _ov_fibrosis(sc, rng, state):
    g, cv = sc.g, sc.cv
    lay = np.zeros((sc.s, sc.s), np.uint8)
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        hv = g.hilum[side][1]
        n = rng.integers(70, 110)
        v = rng.uniform(hv, L.cp, n)
        w = np.clip((v - hv) / (L.cp - hv), 0, 1)
        d = _lateral_d(L, v) - rng.uniform(0.0, 0.06 + 0.06 * w, n)
        a = rng.uniform(0, np.pi, n)
        ln = rng.uniform(0.012, 0.03, n)
        u0 = g.cx + side * d
        p0 = cv.pts(u0, v)
        p1 = cv.pts(u0 + np.cos(a) * ln, v + np.sin(a) * ln)
        cv2.polylines(lay, [np.stack([a_, b_]) for a_, b_ in zip(p0, p1)], False, 255, cv.th(0.003), _AA, _SHIFT)
        for _ in range(rng.integers(6, 14)):         # honeycomb cysts
            vv = rng.uniform(L.cp - 0.15, L.cp - 0.02)
            c = cv.pts(g.cx + side * (_lateral_d(L, vv) - rng.uniform(0.01, 0.05)), vv)
            cv2.circle(lay, tuple(c), int(cv.px(rng.uniform(0.007, 0.013)) * _ONE), 255, cv.th(0.0025), _AA, _SHIFT)
    sc.dens += (lay * sc.lung).astype(_F32) * _F32(0.17 / 255)
    sc.fill += (cv2.blur(lay, (max(3, int(cv.px(0.02)) | 1),) * 2) * sc.lung).astype(_F32) * _F32(0.5 / 255)


def _ov_pleural_thickening(sc, rng, state):
    g, cv = sc.g, sc.cv
    U, V = cv.uv
    sides = [RIGHT, LEFT] if rng.random() < 0.35 else [RIGHT if rng.random() < 0.5 else LEFT]
    noise = _lowfreq(rng, (sc.s, sc.s), 8)
    for side in sides:
        L = g.lungs[side]
        t = rng.uniform(0.02, 0.035)
        dd = _F32(side) * (U - _F32(g.cx))
        zone = (dd > _F32(L.m + 0.55 * (L.W - L.m))) | (V < _F32(L.top + 0.07))
        band = (sc.dist < cv.px(t) * (0.5 + noise)) & zone & (sc.mask[side] > 0)
        f = _blur(band.astype(np.uint8) * 255, cv.px(0.003)) * _F32(1 / 255) * sc.mask[side]
        sc.fill += f
        sc.dens += f * _F32(0.06)


def _ov_hernia(sc, rng, state):
    g, cv = sc.g, sc.cv
    L = g.lungs[LEFT]
    r = rng.uniform(0.045, 0.07)
    u, v = g.cx + rng.uniform(0.01, 0.06), L.dome - rng.uniform(0.06, 0.1)
    win = cv.window(u, v, r * 1.2)
    Uw, Vw = cv.uv_window(win)
    rho = np.sqrt((Uw - _F32(u)) ** 2 + (Vw - _F32(v)) ** 2) * _F32(1 / r)
    inside = np.clip((1 - rho) * _F32(cv.px(r) / 1.5), 0, 1)
    level = _F32(v + rng.uniform(0.1, 0.4) * r)
    gas = inside * (Vw < level)
    fluid = inside * (Vw >= level)
    wall = np.clip(1 - np.abs(rho - 1) * _F32(cv.px(r) / max(cv.px(0.004), 1.0)), 0, 1)
    sc.dens[win] += -gas * _F32(0.3) + fluid * _F32(0.04) + wall * _F32(0.06)
    sc.add_box("Hernia", inside > 0.5, (win[0].start, win[1].start))


def _ov_support_devices(sc, rng, state):
    g, cv = sc.g, sc.cv
    lay = np.zeros((sc.s, sc.s), np.uint8)
    w = cv.th(0.0035)
    kinds = [k for k in ("ett", "cvc", "ng", "ecg") if rng.random() < 0.55] or ["ett", "cvc"]
    car = g.h_top - 0.03
    if "ett" in kinds:
        tip = car - rng.uniform(0.03, 0.07)
        for dx in (-0.007, 0.007):
            cv2.line(lay, tuple(cv.pts(g.cx + dx, -0.02)), tuple(cv.pts(g.cx + dx + 0.003, tip)), 230, w, _AA, _SHIFT)
        cv2.line(lay, tuple(cv.pts(g.cx, -0.02)), tuple(cv.pts(g.cx + 0.003, tip)), 255, w, _AA, _SHIFT)
    if "cvc" in kinds:
        side = RIGHT if rng.random() < 0.7 else LEFT
        L = g.lungs[side]
        u = g.cx + side * np.array([L.W * 0.8, L.W * 0.5, 0.09, 0.045, 0.035])
        v = np.array([L.top + 0.01, L.top + 0.05, L.top + 0.085, g.h_top - 0.09, g.h_top - rng.uniform(0.0, 0.04)])
        t = np.linspace(0, 1, 30)
        uu, vv = np.interp(t, np.linspace(0, 1, 5), u), np.interp(t, np.linspace(0, 1, 5), v)
        cv2.polylines(lay, [cv.pts(uu, vv)], False, 240, w, _AA, _SHIFT)
        cv2.circle(lay, tuple(cv.pts(uu[-1], vv[-1])), int(cv.px(0.007) * _ONE), 255, -1, _AA, _SHIFT)
    if "ng" in kinds:
        Ll = g.lungs[LEFT]
        u = g.cx + np.array([0.012, 0.015, 0.02, 0.1, 0.16])
        v = np.array([-0.02, 0.4, Ll.dome + 0.02, Ll.dome + 0.08, Ll.dome + 0.1])
        t = np.linspace(0, 1, 30)
        cv2.polylines(lay, [cv.pts(np.interp(t, np.linspace(0, 1, 5), u), np.interp(t, np.linspace(0, 1, 5), v))],
                      False, 220, w, _AA, _SHIFT)
    if "ecg" in kinds:
        for _ in range(rng.integers(2, 4)):
            side = RIGHT if rng.random() < 0.5 else LEFT
            L = g.lungs[side]
            c = cv.pts(g.cx + side * rng.uniform(0.1, L.W), rng.uniform(L.top, L.cp))
            cv2.circle(lay, tuple(c), int(cv.px(0.012) * _ONE), 255, cv.th(0.004), _AA, _SHIFT)
            cv2.line(lay, tuple(c), tuple(cv.pts(g.cx + side * 0.6, rng.uniform(0.0, 1.0))), 200, w, _AA, _SHIFT)
    sc.dens += lay.astype(_F32) * _F32(0.6 / 255)


def _ov_viral(sc, rng, state):
    """Bilateral perihilar streaky interstitial pattern."""
    g, cv = sc.g, sc.cv
    lay = np.zeros((sc.s, sc.s), np.uint8)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        n = rng.integers(30, 45)
        a = rng.uniform(-1.2, 1.2, n)
        r0 = rng.uniform(0.01, 0.08, n)
        r1 = r0 + rng.uniform(0.03, 0.1, n)
        hu = g.cx + side * hd
        p0 = cv.pts(hu + side * np.cos(a) * r0, hv + np.sin(a) * r0)
        b = a + rng.normal(0, 0.3, n)
        p1 = cv.pts(hu + side * (np.cos(a) * r0 + np.cos(b) * (r1 - r0)), hv + np.sin(a) * r0 + np.sin(b) * (r1 - r0))
        cv2.polylines(lay, [np.stack([x, y]) for x, y in zip(p0, p1)], False, 255, cv.th(0.004), _AA, _SHIFT)
    lay = _blur(lay, cv.px(0.004)) * sc.lung
    sc.fill += lay * _F32(0.4 / 255)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        win, p = _blob_patch(sc, rng, g.cx + side * (hd + 0.04), hv, 0.03, 3, 0.04, 0.06, 0.4)
        if win is not None:
            sc.fill[win] += p * _F32(0.25)


def _ov_bronchitis(sc, rng, state):
    """Peribronchial cuffing: ring shadows and tram lines around the hila."""
    g, cv = sc.g, sc.cv
    lay = np.zeros((sc.s, sc.s), np.uint8)
    w = cv.th(0.0035)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        hu = g.cx + side * hd
        for _ in range(rng.integers(6, 11)):          # end-on thick-walled bronchi
            a, r = rng.uniform(-1.4, 1.4), rng.uniform(0.03, 0.1)
            c = cv.pts(hu + side * np.cos(a) * r, hv + np.sin(a) * r)
            cv2.circle(lay, tuple(c), int(cv.px(rng.uniform(0.007, 0.012)) * _ONE), 255, w, _AA, _SHIFT)
        for _ in range(rng.integers(4, 8)):           # tram lines
            a, r = rng.uniform(-1.2, 1.2), rng.uniform(0.03, 0.07)
            ln, sep = rng.uniform(0.03, 0.05), 0.006
            nx, ny = -np.sin(a), side * np.cos(a)
            for s_ in (-sep, sep):
                x0, y0 = hu + side * np.cos(a) * r + nx * s_, hv + np.sin(a) * r + ny * s_ * side
                p0 = cv.pts(x0, y0)
                p1 = cv.pts(x0 + side * np.cos(a) * ln, y0 + np.sin(a) * ln)
                cv2.line(lay, tuple(p0), tuple(p1), 255, w, _AA, _SHIFT)
    sc.dens += (lay * sc.lung).astype(_F32) * _F32(0.2 / 255)


def _ov_bronchiolitis(sc, rng, state):
    """Scattered small nodular opacities (the hyperinflation is a geometry modifier)."""
    for _ in range(rng.integers(20, 35)):
        r = rng.uniform(0.006, 0.01)
        _, u, v = sc.sample_point(rng, r, zone=(0.1, 0.95))
        win, prof = _sphere_patch(sc, u, v, r * 1.3)
        if win is not None:
            sc.fill[win] += prof * _F32(0.55)


def _ov_bronchopneumonia(sc, rng, state):
    for side in (RIGHT, LEFT):
        for _ in range(rng.integers(2, 5)):
            _, u, v = sc.sample_point(rng, 0.03, side, zone=(0.3, 0.95))
            _patchy(sc, rng, "Bronchopneumonia", u, v, 0.015, rng.integers(2, 4), 0.012, 0.022,
                    rng.uniform(0.55, 0.7), 0.4)


def _ov_tb_active(sc, rng, state):
    cv = sc.cv
    for _ in range(1 + (rng.random() < 0.25)):
        side, u, v = sc.sample_point(rng, 0.055, zone=(0.05, 0.4))
        win, p = _blob_patch(sc, rng, u, v, 0.025, rng.integers(3, 6), 0.025, 0.04, 0.3)
        if win is None:
            continue
        p *= _F32(0.9)
        U, V = cv.uv_window(win)
        r = rng.uniform(0.014, 0.024)
        cu, cvv = u + rng.uniform(-0.01, 0.01), v + rng.uniform(-0.01, 0.01)
        rho = np.sqrt((U - _F32(cu)) ** 2 + (V - _F32(cvv)) ** 2) * _F32(1 / r)
        hole = np.clip((1 - rho) * _F32(cv.px(r) / 1.2), 0, 1)
        wall = np.clip(1 - np.abs(rho - 1.15) * _F32(4), 0, 1)
        p *= 1 - hole
        sc.fill[win] += p
        sc.dens[win] += wall * _F32(0.07) - hole * _F32(0.04)
        sc.add_box("TB_Active", (p > 0.3) | (hole > 0.5), (win[0].start, win[1].start))


def _ov_tb_latent(sc, rng, state):
    cv = sc.cv
    for _ in range(1 + (rng.random() < 0.4)):
        _, u, v = sc.sample_point(rng, 0.03, zone=(0.05, 0.4))
        lay = np.zeros((sc.s, sc.s), np.uint8)
        for _ in range(rng.integers(1, 4)):              # calcified granulomas
            c = cv.pts(u + rng.uniform(-0.02, 0.02), v + rng.uniform(-0.02, 0.02))
            cv2.circle(lay, tuple(c), int(max(cv.px(rng.uniform(0.006, 0.011)), 0.8) * _ONE), 255, -1, _AA, _SHIFT)
        for _ in range(rng.integers(0, 3)):              # fibrotic streaks towards the apex
            a = rng.uniform(-2.2, -0.9)
            ln = rng.uniform(0.025, 0.045)
            p0 = cv.pts(u, v)
            p1 = cv.pts(u + np.cos(a) * ln, v + np.sin(a) * ln)
            cv2.line(lay, tuple(p0), tuple(p1), 150, cv.th(0.003), _AA, _SHIFT)
        sc.dens += lay.astype(_F32) * _F32(0.42 / 255)
        sc.add_box("TB_Latent", lay > 40)


_MODS = {
    "Atelectasis": _mod_atelectasis, "Cardiomegaly": _mod_cardiomegaly, "Emphysema": _mod_emphysema,
    "Fibrosis": _mod_fibrosis, "Enlarged_Cardiomediastinum": _mod_mediastinum, "Fracture": _mod_fracture,
    "Bronchiolitis": _mod_hyperinflation(1.0), "Viral": _mod_hyperinflation(0.4),
}
_OVERLAYS = {
    "Atelectasis": _ov_atelectasis, "Cardiomegaly": _ov_cardiomegaly, "Effusion": _ov_effusion,
    "Infiltration": _ov_infiltration, "Mass": _ov_mass, "Nodule": _ov_nodule, "Pneumonia": _ov_pneumonia,
    "Pneumothorax": _ov_pneumothorax, "Consolidation": _ov_lobar("Consolidation", False, (0.8, 0.95)),
    "Edema": _ov_edema, "Emphysema": _ov_emphysema, "Fibrosis": _ov_fibrosis,
    "Pleural_Thickening": _ov_pleural_thickening, "Hernia": _ov_hernia,
    "Support_Devices": _ov_support_devices, "Bacterial": _ov_lobar("Bacterial", True, (0.8, 0.95)),
    "Viral": _ov_viral, "Bronchitis": _ov_bronchitis, "Bronchiolitis": _ov_bronchiolitis,
    "Bronchopneumonia": _ov_bronchopneumonia, "TB_Active": _ov_tb_active, "TB_Latent": _ov_tb_latent,
}


# ============================================================================ finishing

def _expose(D, rng, s, noise=(1.5, 4.5)) -> np.ndarray:
    """Window, gamma, a little blur (system sharpness) and quantum noise -> uint8."""
    lo, hi = rng.uniform(-0.03, 0.06), rng.uniform(0.88, 1.02)
    gamma = rng.uniform(0.8, 1.25)
    sigma = rng.uniform(*noise)
    img = cv2.addWeighted(D, 255.0 / (hi - lo), D, 0.0, -lo * 255.0 / (hi - lo), dtype=cv2.CV_8U)
    img = cv2.LUT(img, (255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8))
    if 0.0018 * s >= 0.4:
        img = cv2.GaussianBlur(img, (0, 0), 0.0018 * s)
    # triangular noise from two uniform byte planes: much cheaper than Gaussian, same look
    k = sigma / 104.4
    n1 = rng.integers(0, 256, (s, s), dtype=np.uint8)
    n2 = rng.integers(0, 256, (s, s), dtype=np.uint8)
    nz = cv2.addWeighted(n1, k, n2, k, -255.0 * k, dtype=cv2.CV_32F)
    return cv2.add(img, nz, dtype=cv2.CV_8U)


def _normalise_findings(findings) -> tuple:
    if isinstance(findings, str):
        findings = (findings,)
    findings = tuple(dict.fromkeys(str(f) for f in findings))
    unknown = [f for f in findings if f not in CHEST_FINDINGS]
    if unknown:
        raise ValueError(f"render_chest: unknown findings {unknown}; known: {CHEST_FINDINGS}")
    return findings


def render_chest(seed: int, size: int = 256, findings=(), *, child: bool = False) -> ChestPhantom:
    """Render a frontal (PA) chest radiograph phantom with the given findings.

    Deterministic in (seed, size, findings, child); the findings' order does not matter.
    Returns the uint8 image, exact lung masks and pixel boxes of the localised lesions.
    """
    s = _check_size(size)
    findings = _normalise_findings(findings)
    rng = _rng(seed, 0)
    g = _sample_geometry(rng, bool(child))
    cv = _Canvas(s, rng.uniform(-3, 3), rng.uniform(0.95, 1.04), rng.uniform(-0.025, 0.025, 2))
    active = [f for f in CHEST_FINDINGS if f in findings]
    frng = {f: _rng(seed, 100 + CHEST_FINDINGS.index(f)) for f in active}
    state = {f: {} for f in active}
    for f in active:
        if f in _MODS:
            _MODS[f](g, frng[f], state[f])
    g.finalize()

    sc = _Scene(cv, g)
    D = sc.up(_body(sc))
    D += _heart_density(sc)
    bones = _bones(sc, rng)
    air_col = _trachea(sc)
    vessels = _vessels(sc, rng)
    if g.gastric:
        _gastric_bubble(sc)
    for f in active:
        if f in _OVERLAYS:      # (geometry-only findings have no overlay)
            _OVERLAYS[f](sc, frng[f], state[f])

    A = sc.up(_air_depth(sc))
    marks = vessels.astype(_F32) * _F32(g.marks / 255)
    marks += sc.up(_lowfreq(rng, (sc.low.s,) * 2, 12)) * _F32(0.06)     # parenchymal mottling
    if sc.keep is not None:
        A = np.maximum(A, sc.air_floor)
        marks *= sc.keep
    fill = np.minimum(sc.fill, 1.0)
    clear = (1 - fill) * sc.lung
    D -= clear * (A * _F32(g.air) - marks)
    D += bones * (1 - _F32(0.5) * fill * sc.lung)        # fluid/consolidation hides the ribs
    D += sc.dens
    D -= air_col.astype(_F32) * _F32(0.11 / 255)
    img = _expose(D, _rng(seed, 1), s)
    boxes = [_clip_box(b, s) for b in sc.boxes]
    return ChestPhantom(img, sc.mask[LEFT].copy(), sc.mask[RIGHT].copy(),
                        [b for b in boxes if b is not None], findings)


def _clip_box(b, s):
    name, x, y, w, h = b
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(s), x + w), min(float(s), y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (name, x0, y0, x1 - x0, y1 - y0)


# ============================================================================ bone

def _tube(xl, yl, R, y_end, cortex=0.3, marrow=0.35):
    """Projected density of a hollow long bone along +y starting at y_end (rounded end)."""
    R = np.asarray(R, _F32)
    cap = np.clip((yl - y_end) / R, 0, 1)
    Re = R * np.sqrt(np.clip(1 - (1 - cap) ** 2, 0, 1)) * (yl >= y_end)
    ri = Re * _F32(1 - cortex)
    x2 = xl * xl
    outer = np.sqrt(np.clip(Re * Re - x2, 0, None))
    inner = np.sqrt(np.clip(ri * ri - x2, 0, None))
    return (outer - inner * _F32(1 - marrow)) / np.maximum(R, 1e-6)


def render_bone(seed: int, size: int = 256, abnormal: bool = False) -> np.ndarray:
    """Render a forearm/wrist radiograph phantom (radius, ulna, carpals in soft tissue).

    ``abnormal`` adds one of: a displaced fracture, orthopaedic hardware (plate and screws) or a
    lytic lesion. Deterministic in (seed, size, abnormal).
    """
    s = _check_size(size)
    rng = _rng(seed, 2)
    cv = _Canvas(s, rng.uniform(-15, 15), rng.uniform(0.9, 1.05), rng.uniform(-0.04, 0.04, 2))
    U, V = cv.uv
    x0 = 0.5 + rng.uniform(-0.03, 0.03)
    X = U - _F32(x0)
    # soft tissue: a cylinder tapering towards the wrist
    half = _F32(0.17) + _F32(0.03) * np.clip(V, 0, 1)
    tissue = np.sqrt(np.clip(1 - (X / half) ** 2, 0, 1)) * _F32(0.3)
    # bones: radius (thicker distal end) and ulna; distal ends flare towards the wrist (top)
    sep = rng.uniform(0.065, 0.08)
    bones = [("radius", -sep, 0.032, 0.065, 0.14), ("ulna", sep, 0.027, 0.035, 0.17)]
    kind = ["fracture", "hardware", "lytic"][rng.integers(3)] if abnormal else None
    target = rng.integers(2)
    bone = np.zeros_like(U)
    hard = np.zeros_like(U)
    for i, (_, off, R0, Rend, yend) in enumerate(bones):
        xl, yl = X - _F32(off), V.copy()
        R = _F32(R0) + _F32(Rend - R0) * np.clip(1 - (yl - yend) / 0.12, 0, 1) ** 2
        if kind == "fracture" and i == target:
            bone += _fractured(xl, yl, R, yend, rng, cv)
        else:
            b = _tube(xl, yl, R, yend)
            if kind == "lytic" and i == target:
                b = _lytic(b, xl, yl, R0, rng)
            bone += b
        if kind == "hardware" and i == target:
            hard = _hardware(cv, xl, yl, R0, rng)
    bone += _carpals(U, V, x0, rng)
    tex = _lowfreq(rng, U.shape, 14)
    D = _F32(0.03) + tissue + bone * (_F32(0.42) + _F32(0.08) * tex) + hard
    return _expose(D, _rng(seed, 3), s, noise=(1.5, 3.5))


def _fractured(xl, yl, R, yend, rng, cv):
    """Tube broken along an oblique line; the proximal fragment is displaced and angulated."""
    yf = rng.uniform(0.4, 0.7)
    slope = np.tan(np.deg2rad(rng.uniform(-35, 35)))
    line = yl - _F32(yf) - _F32(slope) * xl
    far = line > 0
    dx, dy = rng.uniform(0.3, 0.8) * 0.03 * rng.choice([-1, 1]), rng.uniform(0.0, 0.01)
    ang = np.deg2rad(rng.uniform(-8, 8))
    xs = (xl - _F32(dx)) * _F32(np.cos(ang)) - (yl - _F32(yf)) * _F32(np.sin(ang))
    b = np.where(far, _tube(xs, yl - _F32(dy), R, yend), _tube(xl, yl, R, yend))
    gap = np.abs(line) < _F32(max(0.004, 1.0 / cv.px(1.0)))
    return b * (1 - gap)


def _lytic(b, xl, yl, R0, rng):
    yc = rng.uniform(0.35, 0.75)
    e = (xl / _F32(R0 * rng.uniform(0.55, 0.8))) ** 2 + ((yl - _F32(yc)) / _F32(R0 * rng.uniform(1.2, 2.2))) ** 2
    hole = np.clip((1 - e) * 3, 0, 1)
    rim = np.clip(1 - np.abs(e - 1.1) * 5, 0, 1)
    return b * (1 - 0.6 * hole) + rim * _F32(0.25)


def _hardware(cv, xl, yl, R0, rng):
    """Bright plate along the bone with transverse screws."""
    y0 = rng.uniform(0.3, 0.45)
    y1 = y0 + rng.uniform(0.25, 0.4)
    side = rng.choice([-1, 1])
    plate = (np.abs(xl - _F32(side * R0 * 1.15)) < _F32(0.009)) & (yl > y0) & (yl < y1)
    out = plate.astype(_F32) * _F32(0.9)
    for ys in np.linspace(y0 + 0.02, y1 - 0.02, rng.integers(3, 6)):
        screw = (np.abs(yl - _F32(ys)) < _F32(0.0055)) & (np.abs(xl) < _F32(R0 * 1.25))
        out += screw * _F32(0.8)
    return np.minimum(out, _F32(1.0))


def _carpals(U, V, x0, rng):
    """A row of rounded carpal bones above the distal radius/ulna."""
    out = np.zeros_like(U)
    for k in range(4):
        cu = x0 + (k - 1.5) * 0.045 + rng.uniform(-0.005, 0.005)
        cv_ = 0.08 + rng.uniform(-0.01, 0.01) - 0.01 * abs(k - 1.5)
        ru, rv = rng.uniform(0.018, 0.024), rng.uniform(0.02, 0.028)
        e = ((U - _F32(cu)) / _F32(ru)) ** 2 + ((V - _F32(cv_)) / _F32(rv)) ** 2
        out += np.sqrt(np.clip(1 - e, 0, 1)) * _F32(0.7) + np.clip(1 - np.abs(e - 0.9) * 6, 0, 1) * _F32(0.2)
    return out
