"""Montgomery and "Chest X-ray Masks and Labels" (lungmasks): phantom layout, reader, masks,
16-bit and RGB decoding, bad inputs, manifests (and those of mtpret's other sources)."""

from __future__ import annotations

import re
import shutil
import warnings

import cv2
import numpy as np
import pytest

from cxr_keras.data import datasets, manifests, phantom
from cxr_keras.data.datasets import lungmasks, montgomery
from cxr_keras.data.images import read_image
from cxr_keras.io import DataError

SIZE, SEED = 64, 3
N_MONT, N_LUNG = 24, 40


def _raw(path):
    return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def mont_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("montgomery")
    montgomery.write_phantom(out, n=N_MONT, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def lung_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("lungmasks")
    lungmasks.write_phantom(out, n=N_LUNG, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- Montgomery

def test_montgomery_layout_counts_and_labels(mont_root):
    set_dir = mont_root / "MontgomerySet"
    names = sorted(p.name for p in (set_dir / "CXR_png").iterdir())
    assert len(names) == N_MONT
    assert all(re.fullmatch(r"MCUCXR_\d{4}_[01]\.png", n) for n in names)
    for sub in ("ManualMask/leftMask", "ManualMask/rightMask"):
        assert sorted(p.name for p in (set_dir / sub).iterdir()) == names
    assert len(list((set_dir / "ClinicalReadings").glob("*.txt"))) == N_MONT

    df = montgomery.load_table(mont_root)
    assert len(df) == N_MONT
    assert set(df["split"]) == {"test"}
    assert df.attrs["classes"] == ["normal", "tuberculosis"]
    assert df.attrs["mask_columns"] == ["mask_left", "mask_right"]
    expected = {n: (int(n[7:11]), int(n[12])) for n in names}  # parsed independently of the reader
    got = {r.image: (r.patient_id, r.label) for r in df.itertuples()}
    assert got == expected
    assert 0 < df["label"].sum() < N_MONT  # both classes
    # TB share follows the real 58/138
    assert df["label"].sum() == round(N_MONT * 58 / 138)


def test_montgomery_masks_match_renderer(mont_root):
    df = montgomery.load_table(mont_root)
    plan = {it["name"]: it for it in montgomery.phantom_plan(N_MONT, SIZE, SEED)}
    for row in df.head(6).itertuples():
        item = plan[row.image]
        ph = phantom.render_chest(item["seed"], SIZE, item["findings"])
        left, right = _raw(row.mask_left), _raw(row.mask_right)
        assert left.dtype == np.uint8 and set(np.unique(left)) <= {0, 255}
        assert set(np.unique(right)) <= {0, 255}
        assert left.any() and right.any()
        assert not np.any((left > 0) & (right > 0))  # disjoint lungs
        np.testing.assert_array_equal(left > 0, np.asarray(ph.lung_left) > 0)   # patient's left
        np.testing.assert_array_equal(right > 0, np.asarray(ph.lung_right) > 0)
        union = (left > 0) | (right > 0)
        np.testing.assert_array_equal(union, (np.asarray(ph.lung_left) > 0) | (np.asarray(ph.lung_right) > 0))


def test_montgomery_16bit_png_round_trip(mont_root):
    plan = montgomery.phantom_plan(N_MONT, SIZE, SEED)
    by_bits = {b: [it for it in plan if it["bits"] == b] for b in (8, 16)}
    assert by_bits[16] and by_bits[8]
    for bits, items in by_bits.items():
        item = items[0]
        path = mont_root / "MontgomerySet" / "CXR_png" / item["name"]
        raw = _raw(path)
        assert raw.dtype == (np.uint16 if bits == 16 else np.uint8)
        img = read_image(path)
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(img, phantom.render_chest(item["seed"], SIZE, item["findings"]).image)


def test_montgomery_clinical_readings(mont_root):
    df = montgomery.load_table(mont_root).set_index("image")
    for item in montgomery.phantom_plan(N_MONT, SIZE, SEED):
        assert df.loc[item["name"], "sex"] == item["sex"]
        assert df.loc[item["name"], "age"] == item["age"]
        assert (df.loc[item["name"], "reading"] == "normal") == (item["label"] == 0)


def test_montgomery_split_options(mont_root):
    assert set(montgomery.load_table(mont_root, split="train")["split"]) == {"train"}
    a = montgomery.load_table(mont_root, split="random", fractions=(0.5, 0.25, 0.25), seed=1)
    b = montgomery.load_table(mont_root, split="random", fractions=(0.5, 0.25, 0.25), seed=1)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].value_counts().to_dict() == {"train": 12, "val": 6, "test": 6}
    with pytest.raises(DataError, match="split"):
        montgomery.load_table(mont_root, split="official")
    # the MontgomerySet folder itself is accepted as root
    assert len(montgomery.load_table(mont_root / "MontgomerySet")) == N_MONT


def test_montgomery_missing_mask_is_named(mont_root, tmp_path):
    root = _copy(mont_root, tmp_path / "m")
    victim = sorted((root / "MontgomerySet/ManualMask/leftMask").glob("*.png"))[3]
    victim.unlink()
    with pytest.raises(DataError, match=re.escape(victim.name)):
        montgomery.load_table(root)
    dropped = montgomery.load_table(root, missing_masks="drop")
    assert len(dropped) == N_MONT - 1 and victim.name not in set(dropped["image"])
    res = manifests.check("montgomery", root)
    assert not res.usable and victim.name in res.reader_error


def test_montgomery_manifest_check(mont_root, tmp_path):
    res = manifests.check("montgomery", mont_root)
    assert res.usable, res.format()
    assert res.table_summary["rows"] == N_MONT and res.table_summary["test"] == N_MONT
    root = _copy(mont_root, tmp_path / "m")
    shutil.rmtree(root / "MontgomerySet/ManualMask/rightMask")
    res = manifests.check("montgomery", root)
    assert not res.usable and any("rightMask" in m for m in res.missing)


# ----------------------------------------------------------------------------- lungmasks

def test_lungmasks_layout_and_mask_names(lung_root):
    base = lung_root / "Lung Segmentation"
    images = sorted(p.name for p in (base / "CXR_png").glob("*.png"))
    masks = sorted(p.name for p in (base / "masks").glob("*.png"))
    tests = sorted(p.name for p in (base / "test").glob("*.png"))
    plan = lungmasks.phantom_plan(N_LUNG, SIZE, SEED)
    assert len(images) == N_LUNG
    assert len(masks) == sum(it["has_mask"] for it in plan)
    assert tests == sorted(it["name"] for it in plan if not it["has_mask"]) and tests
    assert set(tests) <= set(images)
    shen = [m for m in masks if m.startswith("CHNCXR")]
    mont = [m for m in masks if m.startswith("MCUCXR")]
    assert shen and mont
    assert all(m.endswith("_mask.png") for m in shen)
    assert all(not m.endswith("_mask.png") and m in images for m in mont)


def test_lungmasks_table(lung_root):
    base = lung_root / "Lung Segmentation"
    masked = {m.replace("_mask.png", ".png") for m in (p.name for p in (base / "masks").glob("*.png"))}
    df = lungmasks.load_table(lung_root)
    assert df.attrs["mask_columns"] == ["mask"] and df.attrs["classes"] == ["normal", "tuberculosis"]
    assert set(df["image"]) == masked
    for r in df.itertuples():
        assert r.label == int(r.image[-5])
        assert r.patient_id == r.image[:11]
        assert r.source == ("shenzhen" if r.image.startswith("CHNCXR") else "montgomery")
        assert r.mask.endswith(r.image.replace(".png", "_mask.png") if r.source == "shenzhen" else r.image)
    n = len(df)
    assert df["split"].value_counts().to_dict() == {
        "train": round(0.8 * n), "val": round(0.9 * n) - round(0.8 * n), "test": n - round(0.9 * n)}
    again = lungmasks.load_table(lung_root)
    assert again["split"].tolist() == df["split"].tolist()
    other = lungmasks.load_table(lung_root, seed=5)
    assert other["split"].tolist() != df["split"].tolist()


def test_lungmasks_include_unlabelled(lung_root):
    df = lungmasks.load_table(lung_root, include_unlabelled=True)
    extra = df[df["mask"] == ""]
    tests = sorted(p.name for p in (lung_root / "Lung Segmentation" / "test").glob("*.png"))
    assert sorted(extra["image"]) == tests
    assert set(extra["split"]) == {"test"}
    assert all("/test/" in p for p in extra["path"])
    assert len(df) == len(lungmasks.load_table(lung_root)) + len(tests)


def test_lungmasks_masks_and_rgb_images(lung_root):
    df = lungmasks.load_table(lung_root)
    plan = {it["name"]: it for it in lungmasks.phantom_plan(N_LUNG, SIZE, SEED)}
    for source in ("shenzhen", "montgomery"):
        row = df[df["source"] == source].iloc[0]
        item = plan[row["image"]]
        ph = phantom.render_chest(item["seed"], SIZE, item["findings"])
        raw = _raw(row["path"])
        assert raw.ndim == (3 if source == "shenzhen" else 2)  # Shenzhen: RGB PNG of grey content
        img = read_image(row["path"])
        assert img.ndim == 2
        np.testing.assert_array_equal(img, ph.image)
        mask = _raw(row["mask"])
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        lungs = (np.asarray(ph.lung_left) > 0) | (np.asarray(ph.lung_right) > 0)
        np.testing.assert_array_equal(mask > 0, lungs)


def test_lungmasks_unmasked_image_warns(lung_root, tmp_path):
    root = _copy(lung_root, tmp_path / "l")
    victim = sorted((root / "Lung Segmentation/masks").glob("MCUCXR_*.png"))[0]
    victim.unlink()
    with pytest.warns(UserWarning, match=re.escape(victim.name)):
        df = lungmasks.load_table(root)
    assert victim.name not in set(df["image"])
    assert len(df) == len(lungmasks.load_table(lung_root)) - 1
    # the unmasked images of test/ do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lungmasks.load_table(lung_root)


def test_lungmasks_mask_without_image_is_an_error(lung_root, tmp_path):
    root = _copy(lung_root, tmp_path / "l")
    mask = sorted((root / "Lung Segmentation/masks").glob("CHNCXR_*_mask.png"))[0]
    image = root / "Lung Segmentation/CXR_png" / mask.name.replace("_mask.png", ".png")
    image.unlink()
    with pytest.raises(DataError, match=re.escape(mask.name)):
        lungmasks.load_table(root)
    res = manifests.check("lungmasks", root)
    assert not res.usable and image.name in res.reader_error


def test_lungmasks_manifest_check(lung_root, tmp_path):
    res = manifests.check("lungmasks", lung_root)
    assert res.usable, res.format()
    root = _copy(lung_root, tmp_path / "l")
    shutil.rmtree(root / "Lung Segmentation/masks")
    res = manifests.check("lungmasks", root)
    assert not res.usable and any("masks" in m for m in res.missing)


def test_lungmasks_data_prefix_root(lung_root, tmp_path):
    (tmp_path / "k" / "data").mkdir(parents=True)
    shutil.copytree(lung_root / "Lung Segmentation", tmp_path / "k" / "data" / "Lung Segmentation")
    assert len(lungmasks.load_table(tmp_path / "k")) == len(lungmasks.load_table(lung_root))


# ----------------------------------------------------------------------------- manifests

REQUIRED_KEYS = ("name", "title", "citation", "licence", "download", "layout", "label_schema",
                 "splits", "expected_counts", "reader")


@pytest.mark.parametrize("name", ["montgomery", "lungmasks", "mura", "tbx11k", "shenzhen",
                                  "indiana", "rsna_boneage", "deepcovid"])
def test_reader_manifests_point_to_their_module(name):
    man = manifests.load_manifest(name)
    assert all(k in man for k in REQUIRED_KEYS)
    assert man["name"] == name
    assert man["reader"] == f"cxr_keras.data.datasets.{name}"
    assert datasets.get(name).NAME == name


@pytest.mark.parametrize("name,checks", [
    ("shenzhen", {"images": 662, "normal": 326, "tuberculosis": 336}),
    ("indiana", {"images": 7470, "reports": 3955}),
    ("rsna_boneage", {"train": 12611, "validation": 1425, "test": 200}),
    ("deepcovid", {"images": 5184, "train": 2084, "test": 3100, "train_covid": 84, "test_covid": 100}),
])
def test_mtpret_source_manifests(name, checks):
    man = manifests.load_manifest(name)
    assert all(k in man for k in REQUIRED_KEYS), [k for k in REQUIRED_KEYS if k not in man]
    assert man["name"] == name and man["reader"] == f"cxr_keras.data.datasets.{name}"
    assert man["download"] and man["citation"] and man["licence"]
    assert man["layout"] and any(e["required"] for e in man["layout"])
    for entry in man["layout"]:
        assert {"pattern", "required", "expected_count", "description"} <= set(entry)
    for key, value in checks.items():
        assert man["expected_counts"][key] == value
    for key in man.get("approximate_counts", []):
        assert key in man["expected_counts"]
    if name == "shenzhen":
        assert man["expected_counts"]["normal"] + man["expected_counts"]["tuberculosis"] == 662
    if name == "deepcovid":
        c = man["expected_counts"]
        assert c["train_covid"] + c["train_non_covid"] == c["train"]
        assert c["test_covid"] + c["test_non_covid"] == c["test"]


def test_check_of_an_empty_folder_reports_missing(tmp_path):
    res = manifests.check("shenzhen", tmp_path)
    assert not res.usable and any("CXR_png" in m for m in res.missing)
