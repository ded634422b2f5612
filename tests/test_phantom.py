"""Tests of the procedural chest / bone radiograph phantoms."""

import numpy as np
import pytest

from cxr_keras.data.phantom import CHEST_FINDINGS, EXTRA_FINDINGS, NIH_FINDINGS, ChestPhantom, render_bone, render_chest

BOXED = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
         "Pneumothorax", "TB_Active", "TB_Latent")
# findings that only add an opacity (no change of the anatomy), with boxes around every lesion
LOCAL = ("Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax", "Consolidation",
         "Hernia", "Bacterial", "Bronchopneumonia", "TB_Active", "TB_Latent")


def _ctr(p: ChestPhantom, frac=0.8) -> float:
    """Cardiothoracic ratio measured on the lung masks: widest gap between the lungs (rows above
    the diaphragm domes) over the widest extent of both lungs."""
    r, l = p.lung_right > 0, p.lung_left > 0

    def rows(m):
        ys = np.nonzero(m.any(1))[0]
        return ys.min(), ys.min() + frac * (ys.max() - ys.min())

    (r0, r1), (l0, l1) = rows(r), rows(l)
    ys = np.arange(int(max(r0, l0)), int(min(r1, l1)) + 1)
    ys = ys[r[ys].any(1) & l[ys].any(1)]
    cols = np.arange(r.shape[1])
    gap = np.where(l[ys], cols, 10 ** 9).min(1) - np.where(r[ys], cols, -1).max(1) - 1
    xs = np.nonzero((r | l).any(0))[0]
    return gap.max() / (xs.max() - xs.min() + 1)


def _box_mask(boxes, size, pad=0):
    m = np.zeros((size, size), bool)
    for _, x, y, w, h in boxes:
        m[max(0, int(y) - pad):int(np.ceil(y + h)) + pad, max(0, int(x) - pad):int(np.ceil(x + w)) + pad] = True
    return m


def test_finding_lists():
    assert CHEST_FINDINGS == NIH_FINDINGS + EXTRA_FINDINGS
    assert len(set(CHEST_FINDINGS)) == len(CHEST_FINDINGS) == 24


def test_deterministic_and_order_independent():
    a = render_chest(3, 128, ["Nodule", "Effusion", "Support_Devices"])
    b = render_chest(3, 128, ["Support_Devices", "Effusion", "Nodule"])
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.lung_left, b.lung_left) and np.array_equal(a.lung_right, b.lung_right)
    assert a.boxes == b.boxes
    assert set(a.findings) == {"Nodule", "Effusion", "Support_Devices"}
    c = render_chest(3, 128, ["Nodule", "Effusion", "Support_Devices"])
    assert np.array_equal(a.image, c.image)


def test_seeds_differ():
    a, b = render_chest(0, 128), render_chest(1, 128)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.lung_left, b.lung_left)
    assert not np.array_equal(render_chest(0, 128, child=True).image, a.image)


@pytest.mark.parametrize("size", [32, 64, 100, 256, 1024])
def test_shapes_and_masks(size):
    p = render_chest(5, size)
    assert isinstance(p, ChestPhantom)
    for arr in (p.image, p.lung_left, p.lung_right):
        assert arr.shape == (size, size) and arr.dtype == np.uint8
    for m in (p.lung_left, p.lung_right):
        assert set(np.unique(m)) == {0, 1}
    assert not np.any(p.lung_left & p.lung_right)
    xs_r = np.nonzero(p.lung_right)[1].mean()
    xs_l = np.nonzero(p.lung_left)[1].mean()
    assert xs_r < size / 2 < xs_l          # patient's right lung on the image left
    assert p.boxes == [] and p.findings == ()


@pytest.mark.parametrize("child", [False, True])
def test_lungs_are_the_dark_fields(child):
    for seed in range(4):
        p = render_chest(seed, 128, child=child)
        lung = (p.lung_left | p.lung_right) > 0
        img = p.image.astype(float)
        # the mediastinum band between the lungs and the abdomen below them are much brighter
        ys = np.nonzero(lung.any(1))[0]
        mid = img[ys.min() + 10:ys.max() - 10, 60:68]
        below = img[min(127, ys.max() + 6):, 40:88]
        assert img[lung].mean() + 50 < mid.mean()
        assert img[lung].mean() + 50 < below.mean()


def test_cardiomegaly_ratio():
    for child in (False, True):
        normal = [_ctr(render_chest(s, 128, child=child)) for s in range(12)]
        big = [_ctr(render_chest(s, 128, ["Cardiomegaly"], child=child)) for s in range(12)]
        assert max(normal) < 0.5 < min(big), (child, normal, big)
    assert min(_ctr(render_chest(s, 128, ["Cardiomegaly", "Emphysema", "Effusion"])) for s in range(6)) > 0.5


def test_emphysema_darker_larger_lungs():
    for seed in range(4):
        n = render_chest(seed, 128)
        e = render_chest(seed, 128, ["Emphysema"])
        ln, le = (n.lung_left | n.lung_right) > 0, (e.lung_left | e.lung_right) > 0
        assert e.image[le].mean() < n.image[ln].mean() - 8
        assert le.sum() > ln.sum() * 1.05
        assert np.nonzero(le)[0].max() > np.nonzero(ln)[0].max()      # lower, flatter domes


def test_effusion_brightens_lung_base():
    for seed in range(4):
        n = render_chest(seed, 128)
        e = render_chest(seed, 128, ["Effusion"])
        assert np.array_equal(n.lung_left, e.lung_left)       # masks are anatomical
        lung = (n.lung_left | n.lung_right) > 0
        ys = np.nonzero(lung)[0]
        base = lung & (np.arange(128)[:, None] > ys.min() + 0.6 * (ys.max() - ys.min()))
        top = lung & (np.arange(128)[:, None] < ys.min() + 0.5 * (ys.max() - ys.min()))
        diff = e.image.astype(float) - n.image
        assert diff[base].mean() > 10
        assert abs(diff[top].mean()) < 1
        assert all(b[0] == "Effusion" for b in e.boxes) and e.boxes


@pytest.mark.parametrize("name", ["Nodule", "Mass", "TB_Latent"])
def test_lesion_boxes_are_bright(name):
    for seed in range(4):
        n = render_chest(seed, 128)
        p = render_chest(seed, 128, [name])
        assert p.boxes
        for _, x, y, w, h in p.boxes:
            box = (slice(int(y), int(np.ceil(y + h))), slice(int(x), int(np.ceil(x + w))))
            assert p.image[box].astype(float).max() > np.median(p.image[(p.lung_left | p.lung_right) > 0]) + 40
            assert (p.image[box].astype(float) - n.image[box]).max() > 30


def test_pneumothorax_darker_without_markings():
    for seed in range(4):
        n = render_chest(seed, 128)
        p = render_chest(seed, 128, ["Pneumothorax"])
        (_, x, y, w, h), = p.boxes
        box = (slice(int(y), int(np.ceil(y + h))), slice(int(x), int(np.ceil(x + w))))
        diff = p.image[box].astype(float) - n.image[box]
        assert (diff < -15).mean() > 0.05          # a dark air rim ...
        assert (diff > 15).sum() > 0               # ... and a bright pleural line


@pytest.mark.parametrize("name", LOCAL)
def test_local_findings_change_image_inside_boxes(name):
    size = 128
    for seed in range(3):
        n = render_chest(seed, size)
        p = render_chest(seed, size, [name])
        assert np.array_equal(n.lung_left, p.lung_left) and np.array_equal(n.lung_right, p.lung_right)
        assert p.boxes and {b[0] for b in p.boxes} == {name}
        diff = np.abs(p.image.astype(float) - n.image)
        assert diff.sum() > 0
        inside = diff[_box_mask(p.boxes, size, pad=3)].sum()
        assert inside > 0.8 * diff.sum(), (name, seed, inside / diff.sum())


@pytest.mark.parametrize("name", CHEST_FINDINGS)
def test_every_finding_is_visible(name):
    for child in (False, True):
        n = render_chest(7, 96, child=child)
        p = render_chest(7, 96, [name], child=child)
        diff = np.abs(p.image.astype(float) - n.image)
        assert (diff > 12).sum() >= 4, name
        assert p.findings == (name,)


def test_boxes_inside_image_for_all_combinations():
    rng = np.random.default_rng(0)
    for i in range(40):
        size = int(rng.choice([32, 64, 128, 200]))
        fs = list(rng.choice(CHEST_FINDINGS, int(rng.integers(1, 7)), replace=False))
        p = render_chest(i, size, fs, child=bool(i % 2))
        names = {b[0] for b in p.boxes}
        for f in BOXED:
            assert (f in fs) == (f in names), (f, fs)
        for name, x, y, w, h in p.boxes:
            assert name in fs
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size and y + h <= size
    p = render_chest(1, 64, CHEST_FINDINGS)
    assert p.image.shape == (64, 64) and p.lung_left.any() and p.lung_right.any()


def test_box_scales_with_size():
    small = render_chest(4, 128, ["Mass"]).boxes[0]
    big = render_chest(4, 512, ["Mass"]).boxes[0]
    for a, b in zip(small[1:], big[1:]):
        assert abs(a * 4 - b) < 0.03 * 512


def test_support_devices_add_very_bright_lines():
    n = render_chest(2, 128)
    p = render_chest(2, 128, ["Support_Devices"])
    assert (p.image.astype(int) - n.image > 40).sum() > 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="Pneumonitis"):
        render_chest(0, 64, ["Pneumonia", "Pneumonitis"])
    with pytest.raises(ValueError):
        render_chest(0, 16)
    with pytest.raises(ValueError):
        render_bone(0, 31)


def test_render_bone():
    a = render_bone(3, 128)
    assert a.shape == (128, 128) and a.dtype == np.uint8
    assert np.array_equal(a, render_bone(3, 128))
    assert np.array_equal(render_bone(3, 128, abnormal=True), render_bone(3, 128, abnormal=True))
    assert not np.array_equal(a, render_bone(4, 128))
    for seed in range(6):
        n, ab = render_bone(seed, 128), render_bone(seed, 128, abnormal=True)
        assert (np.abs(ab.astype(int) - n) > 25).sum() > 10
    assert render_bone(0, 1024).shape == (1024, 1024)
    # bone is brighter than soft tissue, which is brighter than the background
    img = render_bone(1, 256).astype(float)
    assert np.percentile(img, 95) > np.percentile(img, 50) + 40
