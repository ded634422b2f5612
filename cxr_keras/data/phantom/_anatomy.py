"""Normal chest anatomy of the phantom: patient geometry (lungs, heart, mediastinum), the scene
of density layers, and the layers themselves (body, air, heart, ribs, clavicles, spine, vessels,
trachea, gastric bubble)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ._canvas import AA, F32, LEFT, ONE, RIGHT, SHIFT, Canvas, bounding_box, circle_poly

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


def sample_geometry(rng, child: bool) -> _Geo:
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


def lateral_d(L: _Lung, v):
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

class Scene:
    """Everything a finding needs: canvas, geometry, lung masks/polygons and the layers."""

    n_lateral, n_diaphragm = 48, 47          # point counts of _lung_outline's first two parts

    def __init__(self, cv: Canvas, g: _Geo):
        self.cv, self.g, self.s = cv, g, cv.s
        self.low = cv.resized(min(cv.s, 256))   # grid for smooth fields
        shape = (cv.s, cv.s)
        self.fill = np.zeros(shape, F32)
        self.dens = np.zeros(shape, F32)
        self.keep = None            # vessel-marking multiplier (pneumothorax)
        self.air_floor = None       # minimum air depth (pneumothorax)
        self._dist = None
        self.boxes = []
        self.polys = {side: np.stack(_lung_outline(g, g.lungs[side]), -1).astype(F32) for side in (RIGHT, LEFT)}
        self.heart = np.stack(_heart_outline(g), -1).astype(F32)
        self.knob = (np.stack(circle_poly(g.cx + 0.055, g.h_top - 0.055, g.knob), -1).astype(F32)
                     if g.knob > 0 else None)
        self.mask = self.lung_masks(cv)
        self.lung = self.mask[RIGHT] | self.mask[LEFT]

    def lung_masks(self, cv: Canvas) -> dict:
        """Exact {0,1} lung masks on the canvas: lung polygons minus heart and aortic knob."""
        med = np.zeros((cv.s, cv.s), np.uint8)
        cv2.fillPoly(med, [cv.pts(*self.heart.T)], 1, cv2.LINE_8, SHIFT)
        if self.knob is not None:
            cv2.fillPoly(med, [cv.pts(*self.knob.T)], 1, cv2.LINE_8, SHIFT)
        out = {}
        for side in (RIGHT, LEFT):
            m = np.zeros((cv.s, cv.s), np.uint8)
            cv2.fillPoly(m, [cv.pts(*self.polys[side].T)], 1, cv2.LINE_8, SHIFT)
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
        b = bounding_box(name, mask, offset)
        if b is not None:
            self.boxes.append(b)


# ============================================================================ anatomy

def body(sc: Scene) -> np.ndarray:
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
        cv2.fillPoly(mask, [cv.pts(g.cx + side * arm_d, arm_v)], 1, cv2.LINE_8, SHIFT)
    trunk_u = np.concatenate([halves[0][0], halves[1][0][::-1]])
    trunk_v = np.concatenate([halves[0][1], halves[1][1][::-1]])
    cv2.fillPoly(mask, [cv.pts(trunk_u, trunk_v)], 1, cv2.LINE_8, SHIFT)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    thick = 1.0 - np.exp(dist * F32(-1.0 / cv.px(0.06)))
    return F32(0.04) + F32(0.7) * thick


def air_depth(sc: Scene) -> np.ndarray:
    """Relative air thickness in the lungs (low resolution): soft edges, less at the apex."""
    g, cv = sc.g, sc.low
    m = sc.lung_masks(cv)
    dist = cv2.distanceTransform(m[RIGHT] | m[LEFT], cv2.DIST_L2, 3)
    A = 1.0 - np.exp(dist * F32(-1.0 / cv.px(0.035)))
    _, V = cv.uv
    top = min(g.lungs[RIGHT].top, g.lungs[LEFT].top)
    return A * (F32(0.72) + F32(0.28) * np.clip((V - top) * F32(1 / 0.14), 0, 1))


def heart_density(sc: Scene) -> np.ndarray:
    """Extra density of heart and great vessels (the mediastinum is brighter than tissue)."""
    g, cv, s = sc.g, sc.cv, sc.s
    lay = np.zeros((s, s), np.uint8)
    cv2.fillPoly(lay, [cv.pts(*sc.heart.T)], 110, AA, SHIFT)
    if sc.knob is not None:
        cv2.fillPoly(lay, [cv.pts(*sc.knob.T)], 90, AA, SHIFT)
    if g.thymus:   # sail-shaped thymus over the right upper mediastinum
        th = np.zeros((s, s), np.uint8)
        u = g.cx - np.array([0.03, 0.05, 0.15, 0.06, 0.03])
        v = np.array([0.24, 0.27, g.h_top - 0.02, g.h_top + 0.02, g.h_top])
        cv2.fillPoly(th, [cv.pts(u, v)], 255, AA, SHIFT)
        sc.fill += th.astype(F32) * F32(0.6 / 255)
    k = max(3, int(cv.px(0.02)) | 1)
    return cv2.blur(lay, (k, k)).astype(F32) * F32(0.035 / 110)


def gaussian_blur(img, sigma):
    if sigma < 0.3:
        return img.astype(F32)
    return cv2.GaussianBlur(img.astype(F32), (0, 0), float(sigma))


def fill_from_layer(sc, layer, scale):
    sc.fill += layer.astype(F32) * F32(scale)


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


def bone_density(sc: Scene, rng) -> np.ndarray:
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
        cv2.polylines(post, list(edges), False, 255, cv.th(0.0035), AA, SHIFT)
    cv2.polylines(post, ribs, False, 150, cv.th(t), AA, SHIFT)
    cv2.polylines(ant, ant_ribs, False, 255, cv.th(t * 0.8), AA, SHIFT)
    _clavicles_humeri(sc, other)
    _spine(sc, spine)
    D = cv2.addWeighted(post, 0.13 / 255, ant, 0.035 / 255, 0.0, dtype=cv2.CV_32F)
    D = cv2.scaleAdd(other.astype(F32), 0.16 / 255, D)
    D *= F32(0.3) + F32(0.7) * sc.up(_soft(sc.lung_masks(sc.low), sc.low.px(0.03)))
    return cv2.scaleAdd(spine.astype(F32), 0.06 / 255, D)


def _soft(masks: dict, radius) -> np.ndarray:
    """Box-blurred float union of {0,1} masks."""
    k = max(3, int(radius) | 1)
    return cv2.blur((masks[RIGHT] | masks[LEFT]).astype(F32), (k, k))


def _clavicles_humeri(sc: Scene, lay):
    g, cv = sc.g, sc.cv
    c = np.linspace(0, 1, 20)
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        d = 0.05 + c * (L.W * 0.95)
        v = L.top + 0.045 - c * 0.075 + 0.012 * np.sin(2 * np.pi * c)
        cv2.polylines(lay, [cv.pts(g.cx + side * d, v)], False, 200, cv.th(0.018 if g.child else 0.026), AA, SHIFT)
        head = cv.pts(g.cx + side * (L.W + 0.17), L.top - 0.005)
        cv2.line(lay, tuple(head), tuple(cv.pts(g.cx + side * (L.W + 0.22), 0.8)), 170, cv.th(0.05), AA, SHIFT)
        cv2.circle(lay, tuple(head), int(cv.px(0.055 if not g.child else 0.04) * ONE), 200, -1, AA, SHIFT)


def _spine(sc: Scene, lay):
    """Vertebral bodies with pedicle rings."""
    g, cv = sc.g, sc.cv
    per = 0.045 if not g.child else 0.038
    v0 = np.arange(-1, int(1.0 / per) + 2) * per + 0.01
    uu = g.cx + np.array([-0.032, 0.032, 0.034, -0.034])
    vv = v0[:, None] + np.array([0.0, 0.0, per * 0.82, per * 0.82])
    cv2.fillPoly(lay, list(cv.pts(np.broadcast_to(uu, vv.shape), vv)), 150, AA, SHIFT)
    axes = (int(cv.px(0.006) * ONE), int(cv.px(0.01) * ONE))
    for sd in (-1, 1):
        for c in cv.pts(np.full(v0.shape, g.cx + sd * 0.025), v0 + per * 0.4):
            cv2.ellipse(lay, tuple(c), axes, 0, 0, 360, 160, cv.th(0.003), AA, SHIFT)


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


def vessel_markings(sc: Scene, rng) -> np.ndarray:
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
            cv2.polylines(lay, list(segs), False, int(240 - 35 * depth), cv.th(width), AA, SHIFT)
            spread = np.deg2rad(rng.uniform(15, 35, x.size))
            keep = rng.random(2 * x.size) < (0.95 if depth < 2 else 0.8)
            ang = (np.concatenate([ang + bend - spread, ang + bend + spread]) + rng.normal(0, 0.1, 2 * x.size))[keep]
            ang = np.clip(ang, -1.6, 1.6)
            x, y = np.tile(x1, 2)[keep], np.tile(y1, 2)[keep]
            length *= 0.78
            width *= 0.72
    return lay


def trachea(sc: Scene) -> np.ndarray:
    """Trachea and main bronchi air column (uint8 layer, density to subtract)."""
    g, cv, s = sc.g, sc.cv, sc.s
    lay = np.zeros((s, s), np.uint8)
    car = g.h_top - 0.03
    cv2.line(lay, tuple(cv.pts(g.cx, -0.02)), tuple(cv.pts(g.cx + 0.004, car)), 255,
             cv.th(0.026 if not g.child else 0.02), AA, SHIFT)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        cv2.line(lay, tuple(cv.pts(g.cx + 0.004, car)), tuple(cv.pts(g.cx + side * hd * 0.8, hv - 0.01)),
                 200, cv.th(0.015), AA, SHIFT)
    return lay


def gastric_bubble(sc: Scene):
    g, cv = sc.g, sc.cv
    L = g.lungs[LEFT]
    u, v = circle_poly(g.cx + 0.14, L.dome + 0.06, 0.045, 0.025)
    win = cv.window(g.cx + 0.14, L.dome + 0.06, 0.05)
    if win is None:
        return
    lay = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), np.uint8)
    off = np.array([win[1].start, win[0].start]) * ONE
    cv2.fillPoly(lay, [cv.pts(u, v) - off], 255, AA, SHIFT)
    sc.dens[win] -= lay.astype(F32) * F32(0.16 / 255)
