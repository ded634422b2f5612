"""MURA v1.1: phantom layout, headerless CSVs, labels vs folder names, splits, study level,
bad inputs, manifest."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest

from cxr_keras.data import manifests, phantom
from cxr_keras.data.datasets import mura
from cxr_keras.data.images import read_image
from cxr_keras.io import DataError

SIZE, SEED, N = 64, 2, 48


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("mura")
    mura.write_phantom(out, n=N, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


def _lines(path):
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _studies(path):
    out = {}
    for ln in _lines(path):
        study, label = ln.rsplit(",", 1)
        out[study] = int(label)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_layout_and_csvs(root):
    m = root / "MURA-v1.1"
    train, valid = _lines(m / "train_image_paths.csv"), _lines(m / "valid_image_paths.csv")
    assert len(train) + len(valid) == N and train and valid
    pat = re.compile(r"MURA-v1\.1/(train|valid)/(XR_[A-Z]+)/patient(\d{5})/study\d+_(positive|negative)/image\d+\.png")
    for split, lines in (("train", train), ("valid", valid)):
        for ln in lines:
            mm = pat.fullmatch(ln)
            assert mm and mm.group(1) == split and mm.group(2) in mura.BODY_PARTS
            assert (root / ln).exists()
        studies = _studies(m / f"{split}_labeled_studies.csv")
        assert all(s.endswith("/") for s in studies)
        assert set(studies) == {ln.rsplit("/", 1)[0] + "/" for ln in lines}
    assert (m / "train_image_paths.csv").read_text().count(",") == 0  # headerless, one column
    # patients are disjoint between the official splits
    def pid(ln):
        return ln.split("/")[3]
    assert not {pid(x) for x in train} & {pid(x) for x in valid}


def test_labels_match_csv_and_folder(root):
    m = root / "MURA-v1.1"
    labels = {**_studies(m / "train_labeled_studies.csv"), **_studies(m / "valid_labeled_studies.csv")}
    df = mura.load_table(root)
    assert len(df) == N and df.attrs["classes"] == ["normal", "abnormal"]
    for r in df.itertuples():
        assert r.label == labels[r.study]
        assert r.label == (1 if "_positive/" in r.study else 0)
        assert r.body_part == r.study.split("/")[2]
        assert r.patient_id == int(r.study.split("/")[3][7:])
        assert r.path.endswith(r.image)
    assert 0 < df["label"].sum() < N


def test_official_split(root):
    m = root / "MURA-v1.1"
    valid = set(_lines(m / "valid_image_paths.csv"))
    df = mura.load_table(root)
    assert set(df.loc[df["split"] == "test", "image"]) == valid
    trainval = df[df["split"] != "test"]
    n_patients = trainval["patient_id"].nunique()
    val_patients = set(trainval.loc[trainval["split"] == "val", "patient_id"])
    assert len(val_patients) == round(0.1 * n_patients) > 0
    assert not val_patients & set(trainval.loc[trainval["split"] == "train", "patient_id"])
    by_image = mura.load_table(root, val_by="image", val_fraction=0.25)
    assert (by_image["split"] == "val").sum() == round(0.25 * len(trainval))
    assert mura.load_table(root, seed=9)["split"].tolist() == mura.load_table(root, seed=9)["split"].tolist()


def test_random_split_by_patient(root):
    df = mura.load_table(root, split="random", fractions=(0.6, 0.2, 0.2), seed=4)
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    n_pat = df["patient_id"].nunique()
    per_split = df.groupby("split")["patient_id"].nunique()
    assert per_split["train"] == round(0.6 * n_pat)


def test_study_level(root):
    m = root / "MURA-v1.1"
    n_studies = len(_lines(m / "train_labeled_studies.csv")) + len(_lines(m / "valid_labeled_studies.csv"))
    img = mura.load_table(root)
    st = mura.load_table(root, level="study")
    assert len(st) == n_studies and st["study"].is_unique
    assert st["n_images"].sum() == N and (st["n_images"].between(1, 4)).all()
    for r in st.itertuples():
        assert r.path == r.paths[0] and len(r.paths) == r.n_images
        assert set(r.paths) == set(img.loc[img["study"] == r.study, "path"])
        assert r.label == (1 if "_positive/" in r.study else 0)
    assert set(st.loc[st["split"] == "test", "official_split"]) == {"valid"}


def test_images_render_bone_and_rgb(root):
    plan = mura.phantom_plan(N, SIZE, SEED)
    rgb = [it for it in plan if it["rgb"]]
    grey = [it for it in plan if not it["rgb"]]
    assert rgb and grey
    for item in (rgb[0], grey[0]):
        path = root / item["rel"]
        raw = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == (3 if item["rgb"] else 2)
        expected = phantom.render_bone(item["seed"], SIZE, abnormal=bool(item["label"]))
        np.testing.assert_array_equal(read_image(path), expected)


def test_label_folder_disagreement_names_the_study(root, tmp_path):
    r = _copy(root, tmp_path / "m")
    csv = r / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = _lines(csv)
    study, label = lines[2].rsplit(",", 1)
    lines[2] = f"{study},{1 - int(label)}"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(study)):
        mura.load_table(r)
    res = manifests.check("mura", r)
    assert not res.usable and study in res.reader_error


def test_unlisted_study_and_bad_label(root, tmp_path):
    r = _copy(root, tmp_path / "m")
    csv = r / "MURA-v1.1" / "valid_labeled_studies.csv"
    lines = _lines(csv)
    gone = lines[0].rsplit(",", 1)[0]
    csv.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=re.escape(gone)):
        mura.load_table(r)
    csv.write_text("\n".join([lines[0].rsplit(",", 1)[0] + ",2"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="0 or 1"):
        mura.load_table(r)


def test_missing_image(root, tmp_path):
    r = _copy(root, tmp_path / "m")
    rel = _lines(r / "MURA-v1.1" / "train_image_paths.csv")[1]
    (r / rel).unlink()
    with pytest.raises(DataError, match=re.escape(rel.split("/", 1)[1])):
        mura.load_table(r)
    assert len(mura.load_table(r, missing="drop")) == N - 1


def test_root_can_be_the_mura_folder(root):
    a = mura.load_table(root)
    b = mura.load_table(root / "MURA-v1.1")
    assert a["path"].tolist() == b["path"].tolist()


def test_manifest_check(root, tmp_path):
    res = manifests.check("mura", root)
    assert res.usable, res.format()
    assert res.table_summary["rows"] == N
    r = _copy(root, tmp_path / "m")
    (r / "MURA-v1.1" / "train_labeled_studies.csv").unlink()
    res = manifests.check("mura", r)
    assert not res.usable and any("train_labeled_studies.csv" in m for m in res.missing)


# ----------------------------------------------------------------------------- literal official lines

LITERAL = {
    "train_image_paths.csv": [
        "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png",
        "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image2.png",
        "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image3.png",
        "MURA-v1.1/train/XR_HUMERUS/patient02544/study1_negative/image1.png",
        "MURA-v1.1/train/XR_HUMERUS/patient02544/study2_positive/image1.png",
    ],
    "train_labeled_studies.csv": [
        "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1",
        "MURA-v1.1/train/XR_HUMERUS/patient02544/study1_negative/,0",
        "MURA-v1.1/train/XR_HUMERUS/patient02544/study2_positive/,1",
    ],
    "valid_image_paths.csv": [
        "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png",
        "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image2.png",
    ],
    "valid_labeled_studies.csv": [
        "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1",
    ],
}
# By hand: image (as in the CSV) -> label, patient number, body part, official split.
LITERAL_EXPECTED = {
    "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png": (1, 1, "XR_SHOULDER", "train"),
    "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image2.png": (1, 1, "XR_SHOULDER", "train"),
    "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image3.png": (1, 1, "XR_SHOULDER", "train"),
    "MURA-v1.1/train/XR_HUMERUS/patient02544/study1_negative/image1.png": (0, 2544, "XR_HUMERUS", "train"),
    "MURA-v1.1/train/XR_HUMERUS/patient02544/study2_positive/image1.png": (1, 2544, "XR_HUMERUS", "train"),
    "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png": (1, 11185, "XR_WRIST", "valid"),
    "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image2.png": (1, 11185, "XR_WRIST", "valid"),
}


def _write_literal(base, eol="\n", bom="", final_eol=True):
    for name, lines in LITERAL.items():
        path = base / "MURA-v1.1" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((bom + eol.join(lines) + (eol if final_eol else "")).encode("utf-8"))
    for rel in LITERAL_EXPECTED:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"placeholder")  # the reader checks existence, never decodes
    return base


@pytest.mark.parametrize("eol,bom,final_eol", [("\n", "", True), ("\r\n", "\ufeff", True), ("\n", "", False)],
                         ids=["lf", "bom_crlf", "no_final_newline"])
def test_literal_headerless_csv_lines(tmp_path, eol, bom, final_eol):
    """Literal lines of the four headerless CSVs (study dirs with their trailing slash), also with
    a BOM and CRLF line ends, and without a final newline."""
    root = _write_literal(tmp_path, eol, bom, final_eol)
    df = mura.load_table(root, val_fraction=0.0)
    assert df.attrs["classes"] == ["normal", "abnormal"]
    assert sorted(df["image"]) == sorted(LITERAL_EXPECTED)
    for row in df.itertuples():
        label, pid, part, official = LITERAL_EXPECTED[row.image]
        assert (row.label, row.patient_id, row.body_part, row.official_split) == (label, pid, part, official)
        assert row.split == ("test" if official == "valid" else "train")
        assert row.study == row.image.rsplit("/", 1)[0] + "/"
        assert row.path == str((tmp_path / row.image).resolve())
    studies = mura.load_table(root, val_fraction=0.0, level="study")
    got = {r.study: (r.n_images, r.label) for r in studies.itertuples()}
    assert got == {"MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/": (3, 1),
                   "MURA-v1.1/train/XR_HUMERUS/patient02544/study1_negative/": (1, 0),
                   "MURA-v1.1/train/XR_HUMERUS/patient02544/study2_positive/": (1, 1),
                   "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/": (2, 1)}


def test_literal_lines_bad_label_names_file_and_line(tmp_path):
    root = _write_literal(tmp_path)
    path = root / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = list(LITERAL["train_labeled_studies.csv"])
    lines[1] = "MURA-v1.1/train/XR_HUMERUS/patient02544/study1_negative/,negative"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2") as err:
        mura.load_table(root)
    assert "train_labeled_studies.csv" in str(err.value) and "'negative'" in str(err.value)
