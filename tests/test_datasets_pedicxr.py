"""PediCXR (VinDr-PCXR) phantom writer + reader: DICOM layout, six-class folding, readers'
aggregation, splits, label fractions, MONOCHROME1 decoding and bad input."""

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_keras.data import manifests
from cxr_keras.data.datasets import pedicxr
from cxr_keras.data.images import read_image, write_dicom
from cxr_keras.io import DataError

N = 60
DISEASES = ["No finding", "Bronchitis", "Brocho-pneumonia", "Other disease", "Bronchiolitis",
            "Situs inversus", "Pneumonia", "Pleuro-pneumonia", "Diagphramatic hernia", "Tuberculosis",
            "Congenital emphysema", "CPAM", "Hyaline membrane disease", "Mediastinal tumor", "Lung tumor"]
SIX = ["No finding", "Bronchitis", "Brocho-pneumonia", "Bronchiolitis", "Pneumonia", "Other disease"]
RARE = [d for d in DISEASES if d not in SIX]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pedicxr")
    pedicxr.write_phantom(out, n=N, size=64, seed=5, workers=1, progress=False)
    return out


def read_rows(root, split):
    with open(Path(root) / f"image_labels_{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def per_image(rows):
    """Independent aggregation: diseases by max over readers, No finding by min."""
    out = {}
    for r in rows:
        v = {k: float(r[k]) for k in DISEASES}
        if r["image_id"] in out:
            old = out[r["image_id"]]
            v = {k: (min if k == "No finding" else max)(old[k], v[k]) for k in DISEASES}
        out[r["image_id"]] = v
    return out


def test_layout_and_counts(root):
    train, test = read_rows(root, "train"), read_rows(root, "test")
    header = open(root / "image_labels_train.csv").readline().strip().split(",")
    assert header == ["image_id", "rad_ID"] + DISEASES
    train_ids, test_ids = {r["image_id"] for r in train}, {r["image_id"] for r in test}
    assert len(train_ids) + len(test_ids) == N and not train_ids & test_ids
    assert {p.stem for p in (root / "train").glob("*.dicom")} == train_ids
    assert {p.stem for p in (root / "test").glob("*.dicom")} == test_ids
    assert len(train) > len(train_ids)  # some images have a second reader's row
    df = pedicxr.load_table(root)
    assert len(df) == N and "patient_id" not in df.columns
    assert set(df.loc[df.split == "test", "image_id"]) == test_ids
    assert set(df.loc[df.split != "test", "image_id"]) == train_ids
    assert (df.split == "val").sum() == round(0.2 * len(train_ids))
    assert all(Path(p).is_file() and p.endswith(".dicom") for p in df["path"])


def test_all_columns_and_reader_aggregation(root):
    df = pedicxr.load_table(root, aggregate=None, val_fraction=0.0)
    assert df.attrs["labels"] == DISEASES
    for split in ("train", "test"):
        want = per_image(read_rows(root, split))
        sub = df[df.split == split].set_index("image_id")
        assert len(sub) == len(want)
        for image_id, v in want.items():
            assert [sub.loc[image_id, k] for k in DISEASES] == [v[k] for k in DISEASES], image_id
    # the phantom's second readers really disagree somewhere, and No finding never co-occurs
    dup = df[df.n_readers > 1]
    assert len(dup) and dup["rad_ID"].str.contains(";").all()
    disease_pos = df[DISEASES[1:]].max(axis=1)
    assert not ((df["No finding"] == 1) & (disease_pos == 1)).any()
    rows = read_rows(root, "train")
    firsts = {}
    for r in rows:
        firsts.setdefault(r["image_id"], r)
    changed = [i for i in dup["image_id"]
               if any(float(firsts[i][k]) != df.set_index("image_id").loc[i, k] for k in DISEASES)]
    assert changed, "no image where the max over readers differs from its first row"


def test_six_class_folding_rule(root):
    df = pedicxr.load_table(root, val_fraction=0.0)
    assert df.attrs["labels"] == SIX
    test_rows = per_image(read_rows(root, "test"))
    test_counts = {k: sum(v[k] for v in test_rows.values()) for k in DISEASES}
    folded = [k for k in RARE if test_counts[k] < 5]
    assert folded == RARE and df.attrs["folded"] == RARE
    allv = {**per_image(read_rows(root, "train")), **test_rows}
    n_rare = sum(max(v[k] for k in RARE) for v in allv.values())
    assert n_rare >= 2  # the phantom holds rare diseases to fold
    sub = df.set_index("image_id")
    for image_id, v in allv.items():
        want_other = max([v["Other disease"]] + [v[k] for k in folded])
        assert sub.loc[image_id, "Other disease"] == want_other
        for k in SIX[:-1]:
            assert sub.loc[image_id, k] == v[k]
    assert not set(RARE) & set(df.columns)
    # threshold 0: nothing is folded, all columns kept
    with pytest.warns(UserWarning, match="more than the paper's six"):
        none = pedicxr.load_table(root, min_test_positives=0)
    assert none.attrs["folded"] == [] and set(none.attrs["labels"]) == set(DISEASES)


def test_disease_reaching_the_threshold_stays_separate(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    path = dst / "image_labels_test.csv"
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("Tuberculosis")
    marked = []
    for i in range(1, 6):
        cells = lines[i].split(",")
        cells[col] = "1.0"
        lines[i] = ",".join(cells)
        marked.append(cells[0])
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="Tuberculosis"):
        df = pedicxr.load_table(dst)
    assert "Tuberculosis" in df.attrs["labels"] and "Tuberculosis" not in df.attrs["folded"]
    assert len(df.attrs["labels"]) == 7
    assert (df.set_index("image_id").loc[marked, "Tuberculosis"] == 1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df6 = pedicxr.load_table(dst, min_test_positives=6)
    assert df6.attrs["labels"] == SIX and "Tuberculosis" in df6.attrs["folded"]
    assert (df6.set_index("image_id").loc[marked, "Other disease"] == 1).all()


def test_label_fraction_is_seeded_nested_and_keeps_val_and_test(root):
    full = pedicxr.load_table(root)
    n_train = (full.split == "train").sum()
    parts = {}
    for f in (0.01, 0.1, 0.5, 1.0):
        df = pedicxr.load_table(root, label_fraction=f, seed=0)
        parts[f] = set(df.loc[df.split == "train", "image_id"])
        assert len(parts[f]) == max(1, round(f * n_train))
        for s in ("val", "test"):
            assert set(df.loc[df.split == s, "image_id"]) == set(full.loc[full.split == s, "image_id"])
    assert parts[0.01] <= parts[0.1] <= parts[0.5] <= parts[1.0]
    assert len(parts[0.01]) == 1
    other = pedicxr.load_table(root, label_fraction=0.5, seed=1)
    assert set(other.loc[other.split == "train", "image_id"]) != parts[0.5]
    with pytest.raises(DataError, match="label_fraction"):
        pedicxr.load_table(root, label_fraction=0.0)


def test_monochrome1_in_phantom_and_decoding(root, tmp_path):
    files = sorted(root.glob("*/*.dicom"))
    photo = [pydicom.dcmread(str(p), stop_before_pixels=True).PhotometricInterpretation for p in files]
    n1 = photo.count("MONOCHROME1")
    assert 0.1 * N <= n1 <= 0.5 * N and photo.count("MONOCHROME2") == N - n1
    # the same picture stored both ways decodes to the same grey image
    rng = np.random.default_rng(0)
    pic = np.clip(rng.normal(120, 50, (48, 40)), 0, 255).astype(np.uint8)
    pic[10:20, 5:30] = 0
    pic[30:40, 5:30] = 255
    a = read_image(write_dicom(tmp_path / "m1.dicom", pic, monochrome1=True))
    b = read_image(write_dicom(tmp_path / "m2.dicom", pic, monochrome1=False))
    raw = pydicom.dcmread(str(tmp_path / "m1.dicom")).pixel_array
    assert raw[15, 10] > raw[35, 10]   # stored inverted: black is the high value
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert np.abs(a.astype(int) - pic.astype(int)).max() <= 2
    # a phantom MONOCHROME1 file decodes with the same grey range as the MONOCHROME2 ones
    m1 = read_image(files[photo.index("MONOCHROME1")])
    m2 = read_image(files[photo.index("MONOCHROME2")])
    assert abs(float(np.median(m1)) - float(np.median(m2))) < 40


def test_renamed_column_names_column_and_file(root, tmp_path):
    for name, new in (("image_labels_train.csv", "Broncho-pneumonia"),
                      ("image_labels_test.csv", "Diaphragmatic hernia")):
        dst = tmp_path / name
        shutil.copytree(root, dst)
        path = dst / name
        old = "Brocho-pneumonia" if new == "Broncho-pneumonia" else "Diagphramatic hernia"
        text = path.read_text()
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(DataError) as e:
            pedicxr.load_table(dst)
        assert old in str(e.value) and name in str(e.value)


def test_unknown_label_value_names_line_and_column(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    path = dst / "image_labels_test.csv"
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("Bronchiolitis")
    cells = lines[3].split(",")
    cells[col] = "0.5"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        pedicxr.load_table(dst)
    msg = str(e.value)
    assert "image_labels_test.csv" in msg and "line 4" in msg and "'Bronchiolitis'" in msg and "0.5" in msg


def test_manifest_check_on_phantom(root, tmp_path):
    res = manifests.check("pedicxr", root)
    assert res.usable, res.format()
    assert res.table_summary["rows"] == N and not res.unexpected
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    (dst / "image_labels_test.csv").unlink()
    res = manifests.check("pedicxr", dst)
    assert not res.usable and any("image_labels_test.csv" in m for m in res.missing)
    dst2 = tmp_path / "copy2"
    shutil.copytree(root, dst2)
    next((dst2 / "test").glob("*.dicom")).unlink()
    res = manifests.check("pedicxr", dst2)
    assert not res.usable and "missing" in res.reader_error
