"""Forearm/wrist radiograph phantom (MURA's abnormality task): radius, ulna and carpals in soft
tissue, with fractures, lytic lesions or hardware when abnormal."""

from __future__ import annotations

import numpy as np

from ._canvas import F32, Canvas, check_size, lowfreq, random_stream
from .chest import expose

# ============================================================================ bone

def _tube(xl, yl, R, y_end, cortex=0.3, marrow=0.35):
    """Projected density of a hollow long bone along +y starting at y_end (rounded end)."""
    R = np.asarray(R, F32)
    cap = np.clip((yl - y_end) / R, 0, 1)
    Re = R * np.sqrt(np.clip(1 - (1 - cap) ** 2, 0, 1)) * (yl >= y_end)
    ri = Re * F32(1 - cortex)
    x2 = xl * xl
    outer = np.sqrt(np.clip(Re * Re - x2, 0, None))
    inner = np.sqrt(np.clip(ri * ri - x2, 0, None))
    return (outer - inner * F32(1 - marrow)) / np.maximum(R, 1e-6)


def render_bone(seed: int, size: int = 256, abnormal: bool = False) -> np.ndarray:
    """Render a forearm/wrist radiograph phantom (radius, ulna, carpals in soft tissue).

    ``abnormal`` adds one of: a displaced fracture, orthopaedic hardware (plate and screws) or a
    lytic lesion. Deterministic in (seed, size, abnormal).
    """
    s = check_size(size)
    rng = random_stream(seed, 2)
    cv = Canvas(s, rng.uniform(-15, 15), rng.uniform(0.9, 1.05), rng.uniform(-0.04, 0.04, 2))
    U, V = cv.uv
    x0 = 0.5 + rng.uniform(-0.03, 0.03)
    X = U - F32(x0)
    # soft tissue: a cylinder tapering towards the wrist
    half = F32(0.17) + F32(0.03) * np.clip(V, 0, 1)
    tissue = np.sqrt(np.clip(1 - (X / half) ** 2, 0, 1)) * F32(0.3)
    # bones: radius (thicker distal end) and ulna; distal ends flare towards the wrist (top)
    sep = rng.uniform(0.065, 0.08)
    bones = [("radius", -sep, 0.032, 0.065, 0.14), ("ulna", sep, 0.027, 0.035, 0.17)]
    kind = ["fracture", "hardware", "lytic"][rng.integers(3)] if abnormal else None
    target = rng.integers(2)
    bone = np.zeros_like(U)
    hard = np.zeros_like(U)
    for i, (_, off, R0, Rend, yend) in enumerate(bones):
        xl, yl = X - F32(off), V.copy()
        R = F32(R0) + F32(Rend - R0) * np.clip(1 - (yl - yend) / 0.12, 0, 1) ** 2
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
    tex = lowfreq(rng, U.shape, 14)
    D = F32(0.03) + tissue + bone * (F32(0.42) + F32(0.08) * tex) + hard
    return expose(D, random_stream(seed, 3), s, noise=(1.5, 3.5))


def _fractured(xl, yl, R, yend, rng, cv):
    """Tube broken along an oblique line; the proximal fragment is displaced and angulated."""
    yf = rng.uniform(0.4, 0.7)
    slope = np.tan(np.deg2rad(rng.uniform(-35, 35)))
    line = yl - F32(yf) - F32(slope) * xl
    far = line > 0
    dx, dy = rng.uniform(0.3, 0.8) * 0.03 * rng.choice([-1, 1]), rng.uniform(0.0, 0.01)
    ang = np.deg2rad(rng.uniform(-8, 8))
    xs = (xl - F32(dx)) * F32(np.cos(ang)) - (yl - F32(yf)) * F32(np.sin(ang))
    b = np.where(far, _tube(xs, yl - F32(dy), R, yend), _tube(xl, yl, R, yend))
    gap = np.abs(line) < F32(max(0.004, 1.0 / cv.px(1.0)))
    return b * (1 - gap)


def _lytic(b, xl, yl, R0, rng):
    yc = rng.uniform(0.35, 0.75)
    e = (xl / F32(R0 * rng.uniform(0.55, 0.8))) ** 2 + ((yl - F32(yc)) / F32(R0 * rng.uniform(1.2, 2.2))) ** 2
    hole = np.clip((1 - e) * 3, 0, 1)
    rim = np.clip(1 - np.abs(e - 1.1) * 5, 0, 1)
    return b * (1 - 0.6 * hole) + rim * F32(0.25)


def _hardware(cv, xl, yl, R0, rng):
    """Bright plate along the bone with transverse screws."""
    y0 = rng.uniform(0.3, 0.45)
    y1 = y0 + rng.uniform(0.25, 0.4)
    side = rng.choice([-1, 1])
    plate = (np.abs(xl - F32(side * R0 * 1.15)) < F32(0.009)) & (yl > y0) & (yl < y1)
    out = plate.astype(F32) * F32(0.9)
    for ys in np.linspace(y0 + 0.02, y1 - 0.02, rng.integers(3, 6)):
        screw = (np.abs(yl - F32(ys)) < F32(0.0055)) & (np.abs(xl) < F32(R0 * 1.25))
        out += screw * F32(0.8)
    return np.minimum(out, F32(1.0))


def _carpals(U, V, x0, rng):
    """A row of rounded carpal bones above the distal radius/ulna."""
    out = np.zeros_like(U)
    for k in range(4):
        cu = x0 + (k - 1.5) * 0.045 + rng.uniform(-0.005, 0.005)
        cv_ = 0.08 + rng.uniform(-0.01, 0.01) - 0.01 * abs(k - 1.5)
        ru, rv = rng.uniform(0.018, 0.024), rng.uniform(0.02, 0.028)
        e = ((U - F32(cu)) / F32(ru)) ** 2 + ((V - F32(cv_)) / F32(rv)) ** 2
        out += np.sqrt(np.clip(1 - e, 0, 1)) * F32(0.7) + np.clip(1 - np.abs(e - 0.9) * 6, 0, 1) * F32(0.2)
    return out
