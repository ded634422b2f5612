"""Kermany pediatric pneumonia phantom writer + reader: both naming schemes, three-class and
binary labels, validation rules, patients, RGB files and bad names."""

import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_keras.data import manifests
from cxr_keras.data.datasets import kermany
from cxr_keras.data.images import read_image
from cxr_keras.io import DataError

N = 60


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for scheme in ("original", "new"):
        d = tmp_path_factory.mktemp(scheme)
        kermany.write_phantom(d, n=N, size=64, seed=11, workers=1, progress=False, scheme=scheme)
        out[scheme] = d
    return out


def on_disk(root):
    """Independent listing: (split, class folder, subtype) per file, subtype from the name."""
    out = []
    for p in sorted((Path(root) / "chest_xray").glob("*/*/*.jpeg")):
        name = p.name.lower()
        sub = "bacterial" if "bacteria" in name else "viral" if "virus" in name else "normal"
        out.append((p.parts[-3], p.parts[-2], sub, p))
    return out


def test_layout_and_names(roots):
    orig, new = on_disk(roots["original"]), on_disk(roots["new"])
    assert len(orig) == len(new) == N
    for split, cls, sub, p in orig:
        if cls == "NORMAL":
            assert re.fullmatch(r"(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg", p.name), p.name
        else:
            assert re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", p.name), p.name
    assert any(p.name.startswith("NORMAL2-") for *_, p in orig)
    assert any(p.name.startswith("IM-") for *_, p in orig)
    for split, cls, sub, p in new:
        assert re.fullmatch(r"(NORMAL|BACTERIA|VIRUS)-\d+-\d{4}\.jpeg", p.name), p.name
        assert (cls == "NORMAL") == p.name.startswith("NORMAL")
    assert {s for s, *_ in orig} == {"train", "val", "test"}
    assert {s for s, *_ in new} == {"train", "test"}          # the newer release has no val folder
    val = [c for s, c, *_ in orig if s == "val"]
    assert val.count("NORMAL") >= 1 and val.count("PNEUMONIA") >= 1


def test_both_schemes_give_the_same_class_counts(roots):
    counts = {}
    for scheme, root in roots.items():
        df = kermany.load_table(root, val_fraction=0.1, seed=0)
        assert len(df) == N and (df["scheme"] == scheme).all()
        counts[scheme] = Counter(zip(df["split"].replace({"val": "train"}), df["subtype"]))
        disk = Counter((s.replace("val", "train"), sub) for s, _, sub, _ in on_disk(root))
        assert counts[scheme] == disk
    assert counts["original"] == counts["new"]
    assert {sub for _, sub in counts["original"]} == {"normal", "bacterial", "viral"}


def test_three_class_and_binary_labels(roots):
    root = roots["original"]
    three = kermany.load_table(root)
    binary = kermany.load_table(root, classes="binary")
    assert three.attrs["classes"] == ["normal", "bacterial", "viral"]
    assert binary.attrs["classes"] == ["normal", "pneumonia"]
    assert list(three["path"]) == list(binary["path"])
    assert (binary["label"] == (three["label"] > 0).astype(int)).all()
    disk = {str(p.resolve()): (cls, sub) for _, cls, sub, p in on_disk(root)}
    for path, lab in zip(three["path"], three["label"]):
        cls, sub = disk[path]
        assert ["normal", "bacterial", "viral"][lab] == sub
        assert (lab == 0) == (cls == "NORMAL")
    assert set(three["label"]) == {0, 1, 2} and three["label"].dtype == np.int64
    with pytest.raises(DataError, match="classes"):
        kermany.load_table(root, classes="four")


def test_validation_rules(roots):
    orig, new = roots["original"], roots["new"]
    n_val_folder = len(list((orig / "chest_xray" / "val").glob("*/*.jpeg")))
    n_train_folder = len(list((orig / "chest_xray" / "train").glob("*/*.jpeg")))
    n_test = len(list((orig / "chest_xray" / "test").glob("*/*.jpeg")))
    df = kermany.load_table(orig)                         # val folder used as given
    assert (df.split == "val").sum() == n_val_folder and "val folder" in df.attrs["val_source"]
    assert set(df.loc[df.split == "val", "path"]) == {
        str(p.resolve()) for p in (orig / "chest_xray" / "val").glob("*/*.jpeg")}
    df = kermany.load_table(orig, val_fraction=0.1, seed=4)   # re-drawn from train + val folder
    pool = n_train_folder + n_val_folder
    assert (df.split == "val").sum() == round(0.1 * pool) and (df.split == "test").sum() == n_test
    assert (kermany.load_table(orig, val_fraction=0.1, seed=4)["split"] == df["split"]).all()
    assert not (kermany.load_table(orig, val_fraction=0.1, seed=5)["split"] == df["split"]).all()
    dn = kermany.load_table(new)                          # no val folder: 10% of train by default
    assert (dn.split == "val").sum() == round(0.1 * pool) and "0.1 of train" in dn.attrs["val_source"]
    dp = kermany.load_table(orig, val_fraction=0.3, val_by="patient", seed=0)
    assert not set(dp.loc[dp.split == "val", "patient_id"]) & set(dp.loc[dp.split == "train", "patient_id"])
    dr = kermany.load_table(orig, split="random", fractions=(0.8, 0.1, 0.1), seed=0)
    assert dict(dr.split.value_counts()) == {"train": 48, "val": 6, "test": 6}


def test_patient_ids(roots):
    df = kermany.load_table(roots["original"])
    for path, pid in zip(df["path"], df["patient_id"]):
        name = Path(path).name
        m = re.match(r"person(\d+)_", name)
        if m:
            assert pid == f"person{int(m.group(1))}"
        else:
            assert pid == name.rsplit("-", 1)[0]   # IM-0003 / NORMAL2-IM-0007
    dn = kermany.load_table(roots["new"])
    assert all(pid == Path(p).name.split("-")[1] for p, pid in zip(dn["path"], dn["patient_id"]))
    # the same phantom patients in both schemes: same number of patients
    assert df["patient_id"].nunique() == dn["patient_id"].nunique()
    assert df["patient_id"].nunique() < N   # some patients have several images


def test_rgb_files_of_grey_content(roots):
    files = [p for *_, p in on_disk(roots["original"])]
    raw = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files]
    rgb = [(p, im) for p, im in zip(files, raw) if im.ndim == 3]
    assert 0 < len(rgb) < N
    p, im = rgb[0]
    g = read_image(p)
    assert g.ndim == 2 and g.shape == im.shape[:2]
    assert np.abs(g.astype(int) - im[..., 1].astype(int)).max() <= 2


def copy(root, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(root, dst)
    return dst


def test_bad_file_names(roots, tmp_path):
    dst = copy(roots["original"], tmp_path)
    any_jpeg = next((dst / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))
    (dst / "chest_xray" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")   # skipped
    assert len(kermany.load_table(dst)) == N
    bad = dst / "chest_xray" / "train" / "PNEUMONIA" / "scan_0001.jpeg"
    shutil.copy(any_jpeg, bad)
    with pytest.raises(DataError, match="scan_0001.jpeg"):
        kermany.load_table(dst)
    bad.unlink()
    wrong = dst / "chest_xray" / "test" / "NORMAL" / "person999_virus_1.jpeg"   # pneumonia in NORMAL
    shutil.copy(any_jpeg, wrong)
    with pytest.raises(DataError, match="person999_virus_1.jpeg"):
        kermany.load_table(dst)
    with pytest.raises(DataError, match="scheme"):
        kermany.write_phantom(tmp_path / "x", n=2, scheme="v3")


def test_manifest_check_on_phantom(roots, tmp_path):
    for scheme, root in roots.items():
        res = manifests.check("kermany", root)
        assert res.usable, res.format()
        assert res.table_summary["rows"] == N and not res.unexpected
    dst = copy(roots["new"], tmp_path)
    shutil.rmtree(dst / "chest_xray" / "test" / "NORMAL")
    res = manifests.check("kermany", dst)
    assert not res.usable and any("test/NORMAL" in m for m in res.missing)
