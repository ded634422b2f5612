"""The phantom radiograph generator: determinism, anatomy, masks, and a visual cue per finding."""

import numpy as np
import pytest

from cxr_keras.data.phantom import CHEST_FINDINGS, render_bone, render_chest


def lungs(p):
    return (p.lung_left | p.lung_right) > 0


def test_deterministic_by_seed_and_seeds_differ():
    a, b = render_chest(7, 128, ("Mass", "Effusion")), render_chest(7, 128, ("Mass", "Effusion"))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lung_left, b.lung_left)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, render_chest(8, 128, ("Mass", "Effusion")).image)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_shapes_masks_and_sides(size):
    p = render_chest(3, size)
    assert p.image.shape == (size, size) and p.image.dtype == np.uint8
    for m in (p.lung_left, p.lung_right):
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert not np.any(p.lung_left & p.lung_right)
    # the patient's right lung is on the image left
    assert np.nonzero(p.lung_right)[1].mean() < size / 2 < np.nonzero(p.lung_left)[1].mean()
    # air is dark: the lungs are darker than the rest of the thorax
    assert p.image[lungs(p)].mean() < p.image[~lungs(p)].mean()


def test_findings_leave_anatomy_and_change_only_their_region():
    base, eff = render_chest(5, 256), render_chest(5, 256, ("Effusion",))
    np.testing.assert_array_equal(base.lung_left, eff.lung_left)
    changed = eff.image.astype(int) - base.image.astype(int)
    ys = np.nonzero(np.abs(changed) > 10)[0]
    assert len(ys) > 0 and np.median(ys) > np.nonzero(lungs(base))[0].mean()  # a basal change
    assert changed[np.abs(changed) > 10].mean() > 0  # fluid is brighter than air


def test_cardiomegaly_ratio_above_half():
    for seed in range(5):
        p = render_chest(seed, 256, ("Cardiomegaly",))
        (_, x, _, w, _), = [b for b in p.boxes if b[0] == "Cardiomegaly"]
        cols = np.nonzero(lungs(p).any(axis=0))[0]
        assert w / (cols.max() - cols.min()) > 0.5


def test_emphysema_is_hyperlucent():
    for seed in range(3):
        base, emph = render_chest(seed, 128), render_chest(seed, 128, ("Emphysema",))
        assert emph.image[lungs(emph)].mean() < base.image[lungs(base)].mean() - 10


@pytest.mark.parametrize("finding", ["Nodule", "Mass"])
def test_round_opacities_are_brighter_than_surroundings(finding):
    base, p = render_chest(11, 256), render_chest(11, 256, (finding,))
    for f, x, y, w, h in p.boxes:
        assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256
        inner = (slice(int(y), int(y + h)), slice(int(x), int(x + w)))
        assert p.image[inner].mean() > base.image[inner].mean() + 5


def test_every_finding_renders_and_changes_the_image():
    base = render_chest(2, 96)
    for f in CHEST_FINDINGS:
        p = render_chest(2, 96, (f,))
        assert not np.array_equal(p.image, base.image), f


def test_bad_arguments():
    with pytest.raises(ValueError, match="Pneumothoraxx"):
        render_chest(0, 64, ("Pneumothoraxx",))
    with pytest.raises(ValueError):
        render_chest(0, 16)


def test_bone_phantom():
    a, b = render_bone(4, 128), render_bone(4, 128)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (128, 128) and a.dtype == np.uint8
    assert not np.array_equal(a, render_bone(4, 128, abnormal=True))
