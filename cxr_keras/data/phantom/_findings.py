"""The phantom's findings: geometry modifiers (``MODIFIERS``: a finding that changes the anatomy,
e.g. cardiomegaly) and overlays (``OVERLAYS``: opacities, lucencies, lines and devices drawn
into the scene), one function per finding of ``CHEST_FINDINGS``, each with its own random
stream so the same seed gives the same patient with or without it."""

from __future__ import annotations

import cv2
import numpy as np

from ._anatomy import fill_from_layer, gaussian_blur, lateral_d
from ._canvas import AA, F32, LEFT, ONE, RIGHT, SHIFT, bounding_box, lowfreq

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
    du, dv = U - F32(u), V - F32(v)
    rad = np.sqrt(du * du + dv * dv)
    R = F32(r) if wobble is None else (r * wobble(np.arctan2(dv, du))).astype(F32)
    rho = rad / R
    soft = F32(1.5 / max(sc.cv.px(r), 1.0))            # ~1.5 px anti-aliased edge
    prof = np.sqrt(np.clip(1 - rho * rho, 0, 1)) * 0.6 + 0.4
    prof *= np.clip((1 - rho) / soft + 0.5, 0, 1)
    return win, prof.astype(F32)


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
    acc = np.zeros(Uw.shape, F32)
    for _ in range(n):
        bu, bv = u0 + rng.uniform(-spread, spread), v0 + rng.uniform(-spread, spread) * 0.8
        su, sv = rng.uniform(smin, smax), rng.uniform(smin, smax)
        acc += np.exp(-0.5 * (((Uw - F32(bu)) / F32(su)) ** 2 + ((Vw - F32(bv)) / F32(sv)) ** 2))
    acc = np.clip(acc, 0, 1.3) / 1.3
    if texture:
        acc *= (1 - texture) + texture * lowfreq(rng, acc.shape, 7)
    return win, acc / max(float(acc.max()), 1e-6)


def _patchy(sc, rng, name, u, v, spread, n, smin, smax, amp, texture, bronchograms=False):
    win, p = _blob_patch(sc, rng, u, v, spread, n, smin, smax, texture)
    if win is None:
        return
    p *= F32(amp)
    if bronchograms:
        _air_bronchograms(sc, rng, win, p, u, v, spread)
    sc.fill[win] += p
    sc.add_box(name, (p > 0.3 * amp) & (sc.lung[win] > 0), (win[0].start, win[1].start))


def _air_bronchograms(sc, rng, win, p, u, v, spread):
    """Dark branching air tubes inside an airspace opacity (reduce the fill along them)."""
    cv = sc.cv
    h, w = p.shape
    lay = np.zeros((h, w), np.uint8)
    off = np.array([win[1].start, win[0].start]) * ONE
    side = 1 if u > sc.g.cx else -1
    for _ in range(rng.integers(2, 5)):
        a = rng.uniform(-0.8, 0.8)
        x0, y0 = u - side * spread * 0.6, v + rng.uniform(-spread, spread) * 0.5
        L = spread * rng.uniform(0.8, 1.4)
        x1, y1 = x0 + side * np.cos(a) * L, y0 + np.sin(a) * L
        p0, p1 = cv.pts(x0, y0) - off, cv.pts(x1, y1) - off
        cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(0.005), AA, SHIFT)
        b = a + rng.choice([-0.5, 0.5])
        p2 = cv.pts(x1 + side * np.cos(b) * L * 0.5, y1 + np.sin(b) * L * 0.5) - off
        cv2.line(lay, tuple(p1), tuple(p2), 255, cv.th(0.0035), AA, SHIFT)
    p *= 1 - gaussian_blur(lay, cv.px(0.002)) * F32(0.4 / 255)


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
        cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(rng.uniform(0.012, 0.02)), AA, SHIFT)
    else:                    # wedge: apex to the hilum, base on the lateral pleura
        hd, hv = g.hilum[side]
        vb = rng.uniform(hv + 0.05, L.dome - 0.06)
        hw = rng.uniform(0.04, 0.06)
        wd = lateral_d(L, np.array([vb - hw, vb + hw])) + 0.01
        u = g.cx + side * np.array([hd + 0.05, wd[0], wd[1]])
        v = np.array([hv + 0.03, vb - hw, vb + hw])
        cv2.fillPoly(lay, [cv.pts(u, v)], 255, AA, SHIFT)
    lay = lay * sc.mask[side]
    fill_from_layer(sc, lay, rng.uniform(0.75, 0.9) / 255)
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
        dd = F32(side) * (U - F32(g.cx))
        lf = np.clip((dd - F32(L.m)) * F32(1 / (L.W - L.m)), 0, 1)
        men = F32(level) - F32(rise) * lf * lf          # meniscus: fluid climbs the lateral wall
        f = np.clip((V - men) * F32(1 / 0.012), 0, 1) * sc.mask[side]
        sc.fill += f
        sc.dens += f * F32(0.08)
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
    sc.dens[win] += prof * F32(0.08)
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
        sc.dens[win] += prof * F32(0.12)
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
    cv2.fillPoly(col, [cv.pts(cu, cvv)], 1, cv2.LINE_8, SHIFT)
    ptx = sc.mask[side] & (1 - col)
    if sc.keep is None:
        sc.keep = np.ones((sc.s, sc.s), F32)
        sc.air_floor = np.zeros((sc.s, sc.s), F32)
    sc.keep[ptx > 0] = 0
    np.maximum(sc.air_floor, ptx.astype(F32) * F32(0.85), out=sc.air_floor)
    line = np.zeros((sc.s, sc.s), np.uint8)
    cv2.polylines(line, [cv.pts(cu, cvv)], True, 255, cv.th(0.004), AA, SHIFT)
    near = cv2.dilate(ptx, np.ones((3, 3), np.uint8), iterations=max(1, int(cv.px(0.006))))
    sc.dens += (line * near * sc.mask[side]).astype(F32) * F32(0.3 / 255)
    sc.add_box("Pneumothorax", ptx)


def _lobe(sc, rng, side, whole=True):
    """Float mask (0..1) of a lobe (or a segment of it) of one lung, soft where not fissural."""
    g = sc.g
    L = g.lungs[side]
    U, V = sc.cv.uv
    hd, hv = g.hilum[side]
    dd = F32(side) * (U - F32(g.cx))
    lf = (dd - F32(L.m)) * F32(1 / (L.W - L.m))
    lobes = ["upper", "lower"] + (["middle"] if side == RIGHT else ["lingula"])
    lobe = lobes[rng.integers(len(lobes))]
    fis = hv + rng.uniform(-0.04, 0.0)
    soft = F32(1 / 0.02)
    if lobe == "upper":
        r = np.clip((F32(fis) - V) * (soft * 3), 0, 1)                 # sharp fissure below
    elif lobe == "lower":
        top = F32(hv + 0.04) - F32(0.06) * lf
        r = np.clip((V - top) * soft, 0, 1)
    else:                                                            # middle lobe / lingula
        r = np.clip((V - F32(fis)) * (soft * 3), 0, 1) * np.clip((F32(0.75) - lf) * F32(8), 0, 1)
    r *= sc.mask[side]
    if not whole:   # segmental: intersect with a large ellipse inside the lobe
        ys, xs = np.nonzero(r > 0.5)
        if len(xs):
            i = rng.integers(len(xs))
            cu, cvv = U[ys[i], xs[i]], V[ys[i], xs[i]]
            rr = rng.uniform(0.07, 0.11)
            e = ((U - cu) ** 2 + (V - cvv) ** 2) * F32(1 / rr ** 2)
            r *= np.clip((1 - e) * 4, 0, 1)
    return r


def _ov_lobar(name, whole, amp):
    def overlay(sc, rng, state):
        for _ in range(8):     # retry if the drawn lobe/segment is hidden (e.g. behind a big heart)
            side = RIGHT if rng.random() < 0.5 else LEFT
            r = _lobe(sc, rng, side, whole)
            r *= F32(rng.uniform(*amp)) * ((0.85 + 0.15 * lowfreq(rng, r.shape, 5)))
            bb = bounding_box(name, r > 0.3)
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
        b = np.exp(-0.5 * (((Uw - F32(u0)) / F32(su)) ** 2 + ((Vw - F32(v0)) / F32(sv)) ** 2))
        b *= 0.7 + 0.3 * lowfreq(rng, b.shape, 6)
        sc.fill[win] += b * F32(rng.uniform(0.55, 0.7))
    lay = np.zeros((sc.s, sc.s), np.uint8)   # Kerley B lines at the lateral bases
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        for v in rng.uniform(L.cp - 0.17, L.cp - 0.04, rng.integers(5, 10)):
            d0 = lateral_d(L, v) - 0.004
            ln = rng.uniform(0.02, 0.035)
            p0, p1 = cv.pts(g.cx + side * d0, v), cv.pts(g.cx + side * (d0 - ln), v + rng.uniform(-0.003, 0.003))
            cv2.line(lay, tuple(p0), tuple(p1), 255, cv.th(0.003), AA, SHIFT)
    sc.dens += (lay * sc.lung).astype(F32) * F32(0.2 / 255)


def _ov_emphysema(sc, rng, state):
    for _ in range(rng.integers(0, 3)):            # thin-walled bullae in the upper zones
        r = rng.uniform(0.025, 0.045)
        side, u, v = sc.sample_point(rng, r, zone=(0.05, 0.4))
        win, prof = _sphere_patch(sc, u, v, r)
        if win is None:
            continue
        inside = (prof > 0.2).astype(np.uint8)
        ring = inside - cv2.erode(inside, np.ones((3, 3), np.uint8))
        sc.dens[win] -= inside * F32(0.05)
        sc.dens[win] += ring * F32(0.06) * sc.lung[win]


def _ov_fibrosis(sc, rng, state):
    g, cv = sc.g, sc.cv
    lay = np.zeros((sc.s, sc.s), np.uint8)
    for side in (RIGHT, LEFT):
        L = g.lungs[side]
        hv = g.hilum[side][1]
        n = rng.integers(70, 110)
        v = rng.uniform(hv, L.cp, n)
        w = np.clip((v - hv) / (L.cp - hv), 0, 1)
        d = lateral_d(L, v) - rng.uniform(0.0, 0.06 + 0.06 * w, n)
        a = rng.uniform(0, np.pi, n)
        ln = rng.uniform(0.012, 0.03, n)
        u0 = g.cx + side * d
        p0 = cv.pts(u0, v)
        p1 = cv.pts(u0 + np.cos(a) * ln, v + np.sin(a) * ln)
        cv2.polylines(lay, [np.stack([a_, b_]) for a_, b_ in zip(p0, p1)], False, 255, cv.th(0.003), AA, SHIFT)
        for _ in range(rng.integers(6, 14)):         # honeycomb cysts
            vv = rng.uniform(L.cp - 0.15, L.cp - 0.02)
            c = cv.pts(g.cx + side * (lateral_d(L, vv) - rng.uniform(0.01, 0.05)), vv)
            cv2.circle(lay, tuple(c), int(cv.px(rng.uniform(0.007, 0.013)) * ONE), 255, cv.th(0.0025), AA, SHIFT)
    sc.dens += (lay * sc.lung).astype(F32) * F32(0.17 / 255)
    sc.fill += (cv2.blur(lay, (max(3, int(cv.px(0.02)) | 1),) * 2) * sc.lung).astype(F32) * F32(0.5 / 255)


def _ov_pleural_thickening(sc, rng, state):
    g, cv = sc.g, sc.cv
    U, V = cv.uv
    sides = [RIGHT, LEFT] if rng.random() < 0.35 else [RIGHT if rng.random() < 0.5 else LEFT]
    noise = lowfreq(rng, (sc.s, sc.s), 8)
    for side in sides:
        L = g.lungs[side]
        t = rng.uniform(0.02, 0.035)
        dd = F32(side) * (U - F32(g.cx))
        zone = (dd > F32(L.m + 0.55 * (L.W - L.m))) | (V < F32(L.top + 0.07))
        band = (sc.dist < cv.px(t) * (0.5 + noise)) & zone & (sc.mask[side] > 0)
        f = gaussian_blur(band.astype(np.uint8) * 255, cv.px(0.003)) * F32(1 / 255) * sc.mask[side]
        sc.fill += f
        sc.dens += f * F32(0.06)


def _ov_hernia(sc, rng, state):
    g, cv = sc.g, sc.cv
    L = g.lungs[LEFT]
    r = rng.uniform(0.045, 0.07)
    u, v = g.cx + rng.uniform(0.01, 0.06), L.dome - rng.uniform(0.06, 0.1)
    win = cv.window(u, v, r * 1.2)
    Uw, Vw = cv.uv_window(win)
    rho = np.sqrt((Uw - F32(u)) ** 2 + (Vw - F32(v)) ** 2) * F32(1 / r)
    inside = np.clip((1 - rho) * F32(cv.px(r) / 1.5), 0, 1)
    level = F32(v + rng.uniform(0.1, 0.4) * r)
    gas = inside * (Vw < level)
    fluid = inside * (Vw >= level)
    wall = np.clip(1 - np.abs(rho - 1) * F32(cv.px(r) / max(cv.px(0.004), 1.0)), 0, 1)
    sc.dens[win] += -gas * F32(0.3) + fluid * F32(0.04) + wall * F32(0.06)
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
            cv2.line(lay, tuple(cv.pts(g.cx + dx, -0.02)), tuple(cv.pts(g.cx + dx + 0.003, tip)), 230, w, AA, SHIFT)
        cv2.line(lay, tuple(cv.pts(g.cx, -0.02)), tuple(cv.pts(g.cx + 0.003, tip)), 255, w, AA, SHIFT)
    if "cvc" in kinds:
        side = RIGHT if rng.random() < 0.7 else LEFT
        L = g.lungs[side]
        u = g.cx + side * np.array([L.W * 0.8, L.W * 0.5, 0.09, 0.045, 0.035])
        v = np.array([L.top + 0.01, L.top + 0.05, L.top + 0.085, g.h_top - 0.09, g.h_top - rng.uniform(0.0, 0.04)])
        t = np.linspace(0, 1, 30)
        uu, vv = np.interp(t, np.linspace(0, 1, 5), u), np.interp(t, np.linspace(0, 1, 5), v)
        cv2.polylines(lay, [cv.pts(uu, vv)], False, 240, w, AA, SHIFT)
        cv2.circle(lay, tuple(cv.pts(uu[-1], vv[-1])), int(cv.px(0.007) * ONE), 255, -1, AA, SHIFT)
    if "ng" in kinds:
        Ll = g.lungs[LEFT]
        u = g.cx + np.array([0.012, 0.015, 0.02, 0.1, 0.16])
        v = np.array([-0.02, 0.4, Ll.dome + 0.02, Ll.dome + 0.08, Ll.dome + 0.1])
        t = np.linspace(0, 1, 30)
        cv2.polylines(lay, [cv.pts(np.interp(t, np.linspace(0, 1, 5), u), np.interp(t, np.linspace(0, 1, 5), v))],
                      False, 220, w, AA, SHIFT)
    if "ecg" in kinds:
        for _ in range(rng.integers(2, 4)):
            side = RIGHT if rng.random() < 0.5 else LEFT
            L = g.lungs[side]
            c = cv.pts(g.cx + side * rng.uniform(0.1, L.W), rng.uniform(L.top, L.cp))
            cv2.circle(lay, tuple(c), int(cv.px(0.012) * ONE), 255, cv.th(0.004), AA, SHIFT)
            cv2.line(lay, tuple(c), tuple(cv.pts(g.cx + side * 0.6, rng.uniform(0.0, 1.0))), 200, w, AA, SHIFT)
    sc.dens += lay.astype(F32) * F32(0.6 / 255)


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
        cv2.polylines(lay, [np.stack([x, y]) for x, y in zip(p0, p1)], False, 255, cv.th(0.004), AA, SHIFT)
    lay = gaussian_blur(lay, cv.px(0.004)) * sc.lung
    sc.fill += lay * F32(0.4 / 255)
    for side in (RIGHT, LEFT):
        hd, hv = g.hilum[side]
        win, p = _blob_patch(sc, rng, g.cx + side * (hd + 0.04), hv, 0.03, 3, 0.04, 0.06, 0.4)
        if win is not None:
            sc.fill[win] += p * F32(0.25)


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
            cv2.circle(lay, tuple(c), int(cv.px(rng.uniform(0.007, 0.012)) * ONE), 255, w, AA, SHIFT)
        for _ in range(rng.integers(4, 8)):           # tram lines
            a, r = rng.uniform(-1.2, 1.2), rng.uniform(0.03, 0.07)
            ln, sep = rng.uniform(0.03, 0.05), 0.006
            nx, ny = -np.sin(a), side * np.cos(a)
            for s_ in (-sep, sep):
                x0, y0 = hu + side * np.cos(a) * r + nx * s_, hv + np.sin(a) * r + ny * s_ * side
                p0 = cv.pts(x0, y0)
                p1 = cv.pts(x0 + side * np.cos(a) * ln, y0 + np.sin(a) * ln)
                cv2.line(lay, tuple(p0), tuple(p1), 255, w, AA, SHIFT)
    sc.dens += (lay * sc.lung).astype(F32) * F32(0.2 / 255)


def _ov_bronchiolitis(sc, rng, state):
    """Scattered small nodular opacities (the hyperinflation is a geometry modifier)."""
    for _ in range(rng.integers(20, 35)):
        r = rng.uniform(0.006, 0.01)
        _, u, v = sc.sample_point(rng, r, zone=(0.1, 0.95))
        win, prof = _sphere_patch(sc, u, v, r * 1.3)
        if win is not None:
            sc.fill[win] += prof * F32(0.55)


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
        p *= F32(0.9)
        U, V = cv.uv_window(win)
        r = rng.uniform(0.014, 0.024)
        cu, cvv = u + rng.uniform(-0.01, 0.01), v + rng.uniform(-0.01, 0.01)
        rho = np.sqrt((U - F32(cu)) ** 2 + (V - F32(cvv)) ** 2) * F32(1 / r)
        hole = np.clip((1 - rho) * F32(cv.px(r) / 1.2), 0, 1)
        wall = np.clip(1 - np.abs(rho - 1.15) * F32(4), 0, 1)
        p *= 1 - hole
        sc.fill[win] += p
        sc.dens[win] += wall * F32(0.07) - hole * F32(0.04)
        sc.add_box("TB_Active", (p > 0.3) | (hole > 0.5), (win[0].start, win[1].start))


def _ov_tb_latent(sc, rng, state):
    cv = sc.cv
    for _ in range(1 + (rng.random() < 0.4)):
        _, u, v = sc.sample_point(rng, 0.03, zone=(0.05, 0.4))
        lay = np.zeros((sc.s, sc.s), np.uint8)
        for _ in range(rng.integers(1, 4)):              # calcified granulomas
            c = cv.pts(u + rng.uniform(-0.02, 0.02), v + rng.uniform(-0.02, 0.02))
            cv2.circle(lay, tuple(c), int(max(cv.px(rng.uniform(0.006, 0.011)), 0.8) * ONE), 255, -1, AA, SHIFT)
        for _ in range(rng.integers(0, 3)):              # fibrotic streaks towards the apex
            a = rng.uniform(-2.2, -0.9)
            ln = rng.uniform(0.025, 0.045)
            p0 = cv.pts(u, v)
            p1 = cv.pts(u + np.cos(a) * ln, v + np.sin(a) * ln)
            cv2.line(lay, tuple(p0), tuple(p1), 150, cv.th(0.003), AA, SHIFT)
        sc.dens += lay.astype(F32) * F32(0.42 / 255)
        sc.add_box("TB_Latent", lay > 40)


MODIFIERS = {
    "Atelectasis": _mod_atelectasis, "Cardiomegaly": _mod_cardiomegaly, "Emphysema": _mod_emphysema,
    "Fibrosis": _mod_fibrosis, "Enlarged_Cardiomediastinum": _mod_mediastinum, "Fracture": _mod_fracture,
    "Bronchiolitis": _mod_hyperinflation(1.0), "Viral": _mod_hyperinflation(0.4),
}
OVERLAYS = {
    "Atelectasis": _ov_atelectasis, "Cardiomegaly": _ov_cardiomegaly, "Effusion": _ov_effusion,
    "Infiltration": _ov_infiltration, "Mass": _ov_mass, "Nodule": _ov_nodule, "Pneumonia": _ov_pneumonia,
    "Pneumothorax": _ov_pneumothorax, "Consolidation": _ov_lobar("Consolidation", False, (0.8, 0.95)),
    "Edema": _ov_edema, "Emphysema": _ov_emphysema, "Fibrosis": _ov_fibrosis,
    "Pleural_Thickening": _ov_pleural_thickening, "Hernia": _ov_hernia,
    "Support_Devices": _ov_support_devices, "Bacterial": _ov_lobar("Bacterial", True, (0.8, 0.95)),
    "Viral": _ov_viral, "Bronchitis": _ov_bronchitis, "Bronchiolitis": _ov_bronchiolitis,
    "Bronchopneumonia": _ov_bronchopneumonia, "TB_Active": _ov_tb_active, "TB_Latent": _ov_tb_latent,
}
