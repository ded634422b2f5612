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

from ._anatomy import (
    Scene,
    air_depth,
    body,
    bone_density,
    gastric_bubble,
    heart_density,
    sample_geometry,
    trachea,
    vessel_markings,
)
from ._canvas import F32, LEFT, RIGHT, Canvas, check_size, lowfreq, random_stream
from ._findings import MODIFIERS, OVERLAYS

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



# ============================================================================ finishing

def expose(D, rng, s, noise=(1.5, 4.5)) -> np.ndarray:
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
    s = check_size(size)
    findings = _normalise_findings(findings)
    rng = random_stream(seed, 0)
    g = sample_geometry(rng, bool(child))
    cv = Canvas(s, rng.uniform(-3, 3), rng.uniform(0.95, 1.04), rng.uniform(-0.025, 0.025, 2))
    active = [f for f in CHEST_FINDINGS if f in findings]
    frng = {f: random_stream(seed, 100 + CHEST_FINDINGS.index(f)) for f in active}
    state = {f: {} for f in active}
    for f in active:
        if f in MODIFIERS:
            MODIFIERS[f](g, frng[f], state[f])
    g.finalize()

    sc = Scene(cv, g)
    D = sc.up(body(sc))
    D += heart_density(sc)
    bones = bone_density(sc, rng)
    air_col = trachea(sc)
    vessels = vessel_markings(sc, rng)
    if g.gastric:
        gastric_bubble(sc)
    for f in active:
        if f in OVERLAYS:      # (geometry-only findings have no overlay)
            OVERLAYS[f](sc, frng[f], state[f])

    A = sc.up(air_depth(sc))
    marks = vessels.astype(F32) * F32(g.marks / 255)
    marks += sc.up(lowfreq(rng, (sc.low.s,) * 2, 12)) * F32(0.06)     # parenchymal mottling
    if sc.keep is not None:
        A = np.maximum(A, sc.air_floor)
        marks *= sc.keep
    fill = np.minimum(sc.fill, 1.0)
    clear = (1 - fill) * sc.lung
    D -= clear * (A * F32(g.air) - marks)
    D += bones * (1 - F32(0.5) * fill * sc.lung)        # fluid/consolidation hides the ribs
    D += sc.dens
    D -= air_col.astype(F32) * F32(0.11 / 255)
    img = expose(D, random_stream(seed, 1), s)
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
