"""Forearm/wrist radiograph phantom (MURA's abnormality task): radius, ulna and carpals in soft
tissue, with fractures, lytic lesions or hardware when abnormal; and a whole-hand radiograph
phantom with a skeletal-age cue (RSNA Bone Age, :func:`render_hand`)."""

from __future__ import annotations

import cv2
import numpy as np

from ._canvas import AA, F32, ONE, SHIFT, Canvas, check_size, lowfreq, random_stream
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


# ============================================================================ hand (bone age)

# Skeletal maturity as the phantom draws it (a caricature of Greulich-Pyle, not an atlas):
# the hand grows, the eight carpals ossify one after another over the first ~11 years, and the
# growth plates (physes) between epiphyses and shafts narrow and then fuse between 13 and 17.
CARPAL_YEARS = (0.2, 0.3, 2.0, 3.0, 4.5, 5.0, 6.0, 11.0)   # age at which carpal k appears
FUSION_YEARS = 16.0                                        # physes closed from here on


def hand_maturity(age_months: float) -> dict:
    """The age cues :func:`render_hand` draws for ``age_months``: ``scale`` (hand length
    relative to an adult's), ``carpals`` (ossified carpal bones, 0-8) and ``physis`` (growth
    plate gap in patient-frame units, 0 once fused)."""
    years = float(age_months) / 12.0
    return dict(scale=0.62 + 0.38 * min(years, 17.0) / 17.0,
                carpals=int(sum(years >= y for y in CARPAL_YEARS)),
                physis=0.012 * float(np.clip((FUSION_YEARS - years) / FUSION_YEARS, 0, 1)) ** 0.5)


def render_hand(seed: int, size: int = 256, age_months: float = 120.0,
                male: bool = True) -> np.ndarray:
    """Render a left-hand PA radiograph phantom (RSNA Bone Age): distal radius and ulna,
    carpals, metacarpals and phalanges in soft tissue, fingers up.

    The age cue (:func:`hand_maturity`): hand size, the number of ossified carpals and the width
    of the growth plates (closed at 16 years); boys' hands are ~5% larger. Deterministic in
    (seed, size, age_months, male).
    """
    s = check_size(size)
    if not 0 <= age_months <= 240:
        raise ValueError(f"render_hand: age_months must be in [0, 240], got {age_months!r}")
    rng = random_stream(seed, 4)
    mat = hand_maturity(age_months)
    k = mat["scale"] * (1.05 if male else 1.0)
    cv = Canvas(s, rng.uniform(-12, 12), rng.uniform(0.92, 1.02) * k, rng.uniform(-0.03, 0.03, 2))
    bones = np.zeros((s, s), np.uint8)
    tissue = np.zeros((s, s), np.uint8)
    gap = mat["physis"]

    def seg(layer, u0, v0, u1, v1, width, value=255):
        p = cv.pts(np.array([u0, u1]), np.array([v0, v1]))
        cv2.line(layer, tuple(p[0]), tuple(p[1]), value, cv.th(width), AA, SHIFT)

    def cap(u, v, r, value=255):
        c = cv.pts(u, v)
        cv2.circle(bones, (int(c[0]), int(c[1])), max(1, int(round(cv.px(r) * ONE))), value, -1,
                   AA, SHIFT)

    def long_bone(u0, v0, u1, v1, width, epi_at_start):
        """Shaft from (u0, v0) to (u1, v1); an epiphysis beyond the start (or the end),
        separated by the physis gap while it is open."""
        d = np.array([u1 - u0, v1 - v0])
        d = d / max(np.linalg.norm(d), 1e-6)
        seg(bones, u0, v0, u1, v1, width)
        eu, ev = (u0, v0) if epi_at_start else (u1, v1)
        sign = -1.0 if epi_at_start else 1.0
        cap(eu + sign * d[0] * (gap + width * 0.3), ev + sign * d[1] * (gap + width * 0.3),
            width * 0.45)

    # forearm: radius (thumb side, image right for a left hand PA) and ulna, epiphyses at the wrist
    wrist = 0.74
    seg(tissue, 0.5, 1.2, 0.5, wrist - 0.05, 0.26)
    long_bone(0.56, wrist, 0.56, 1.1, 0.075, True)
    long_bone(0.43, wrist + 0.01, 0.43, 1.1, 0.05, True)
    # carpals: ossification centres in a 2 x 4 block, in the order they appear
    centres = [(0.47, 0.665), (0.42, 0.67), (0.55, 0.665), (0.52, 0.71), (0.60, 0.64),
               (0.57, 0.625), (0.50, 0.625), (0.42, 0.70)]
    grown = float(np.clip(age_months / 144.0, 0.25, 1.0))
    for j in range(mat["carpals"]):
        u, v = centres[j]
        cap(u + rng.uniform(-0.004, 0.004), v + rng.uniform(-0.004, 0.004), 0.022 * grown, 230)
    # metacarpals and phalanges: four fingers and the thumb (image right), spread a little
    fingers = [(0.37, -0.16), (0.45, -0.05), (0.53, 0.05), (0.60, 0.15)]
    for j, (u0, angle) in enumerate(fingers):
        angle += rng.normal(0, 0.03)
        du, dv = np.sin(angle), -np.cos(angle)
        lengths = (0.2, 0.12, 0.075, 0.06) if j in (1, 2) else (0.18, 0.105, 0.065, 0.055)
        u, v = u0, 0.6
        seg(tissue, u, v, u + du * sum(lengths), v + dv * sum(lengths), 0.075)
        for i, length in enumerate(lengths):
            width = 0.032 - 0.004 * i
            u1, v1 = u + du * length, v + dv * length
            # metacarpal epiphyses at the distal end, phalangeal ones at the proximal end
            long_bone(u, v, u1 - du * 0.01, v1 - dv * 0.01, width, epi_at_start=i > 0)
            u, v = u1 + du * (gap + 0.012), v1 + dv * (gap + 0.012)
    u, v = 0.66, 0.64  # thumb: metacarpal and two phalanges, pointing up and out
    du, dv = np.sin(0.7), -np.cos(0.7)
    seg(tissue, u, v, u + du * 0.3, v + dv * 0.3, 0.08)
    for i, length in enumerate((0.13, 0.1, 0.07)):
        u1, v1 = u + du * length, v + dv * length
        long_bone(u, v, u1 - du * 0.01, v1 - dv * 0.01, 0.034 - 0.004 * i, epi_at_start=True)
        u, v = u1 + du * (gap + 0.012), v1 + dv * (gap + 0.012)
    sigma = max(0.5, cv.px(0.003))
    b = cv2.GaussianBlur(bones.astype(F32) / 255, (0, 0), sigma)
    t = cv2.GaussianBlur(tissue.astype(F32) / 255, (0, 0), 3 * sigma)
    tex = lowfreq(rng, b.shape, 12)
    D = F32(0.03) + t * F32(0.28) + b * (F32(0.45) + F32(0.1) * tex)
    return expose(D, random_stream(seed, 5), s, noise=(1.5, 3.5))
