"""NIH ChestX-ray14 reader on literal lines of the official files: Data_Entry_2017(_v2020).csv
quirks, official / random splits, val_by, missing images, BBox_List_2017.csv, bad headers.

Every expected value is written here by hand; nothing is recomputed with the reader's helpers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_keras.data.datasets import nih
from cxr_keras.io import DataError

# The 14 findings in the order our tables use (manifest label_schema), spelled as in the file.
FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
            "Hernia"]
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# Lines as the official file has them.
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia,0,3,81,F,PA,2582,2991,0.143,0.143",
    "00000013_005.png,Emphysema|Infiltration|Pleural_Thickening|Pneumothorax,5,13,60,M,AP,3056,2544,0.139,0.139",
    "00000013_008.png,No Finding,8,13,60,M,AP,3056,2544,0.139,0.139",
    "00000032_012.png,Atelectasis|Consolidation|Edema|Pneumonia,12,32,54,F,AP,2500,2048,0.168,0.168",
    "00000020_002.png,Fibrosis|Infiltration|Pleural_Thickening,1,20,48,M,PA,2414,2991,0.143,0.143",
    "00000017_000.png,Effusion|Infiltration|Nodule,0,17,77,M,PA,2500,2048,0.168,0.168",
    "00000012_000.png,Effusion|Mass,0,12,76,M,PA,2992,2991,0.143,0.143",
]
# Hand-written expectations for ROWS: positives, patient, follow-up, age, sex, view.
EXPECTED = {
    "00000001_000.png": ({"Cardiomegaly"}, 1, 0, 58, "M", "PA"),
    "00000001_001.png": ({"Cardiomegaly", "Emphysema"}, 1, 1, 58, "M", "PA"),
    "00000001_002.png": ({"Cardiomegaly", "Effusion"}, 1, 2, 58, "M", "PA"),
    "00000002_000.png": (set(), 2, 0, 81, "M", "PA"),
    "00000003_000.png": ({"Hernia"}, 3, 0, 81, "F", "PA"),
    "00000013_005.png": ({"Emphysema", "Infiltration", "Pleural_Thickening", "Pneumothorax"},
                         13, 5, 60, "M", "AP"),
    "00000013_008.png": (set(), 13, 8, 60, "M", "AP"),
    "00000032_012.png": ({"Atelectasis", "Consolidation", "Edema", "Pneumonia"}, 32, 12, 54, "F", "AP"),
    "00000020_002.png": ({"Fibrosis", "Infiltration", "Pleural_Thickening"}, 20, 1, 48, "M", "PA"),
    "00000017_000.png": ({"Effusion", "Infiltration", "Nodule"}, 17, 0, 77, "M", "PA"),
    "00000012_000.png": ({"Effusion", "Mass"}, 12, 0, 76, "M", "PA"),
}
# Official lists: patients 13 and 32 in test (patient-disjoint), no trailing newline as NIH.
TEST_LIST = ["00000013_005.png", "00000013_008.png", "00000032_012.png"]
TRAIN_VAL_LIST = ["00000001_000.png", "00000001_001.png", "00000001_002.png", "00000002_000.png",
                  "00000003_000.png", "00000020_002.png", "00000017_000.png", "00000012_000.png"]
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_ROWS = [
    "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661",
    "00000661_000.png,Cardiomegaly,298.847457627119,437.459894729873,548.881355932203,428.474576271186",
    "00020259_002.png,Infiltrate,611.555555555556,535.077934027778,249.173333333333,199.111111111111",
    "00010815_006.png,Mass,311.182222222222,241.531267361111,146.773333333333,256",
]


def _png(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 4), 128, np.uint8))


def _write(root: Path, rows=ROWS, header=HEADER, entry="Data_Entry_2017_v2020.csv", eol="\n",
           test=TEST_LIST, trainval=TRAIN_VAL_LIST, images=None, prefix=""):
    """The official layout: entry file, the two lists, PNGs spread over images_001/002."""
    root.mkdir(parents=True, exist_ok=True)
    (root / entry).write_bytes((prefix + eol.join([header] + list(rows)) + eol).encode("utf-8"))
    (root / "test_list.txt").write_text("\n".join(test))
    (root / "train_val_list.txt").write_text("\n".join(trainval))
    names = [r.split(",")[0] for r in rows] if images is None else images
    for i, name in enumerate(names):
        _png(root / f"images_{1 + i % 2:03d}" / "images" / name)
    return root


def _by_image(df):
    return {name: i for i, name in enumerate(df["image"])}


def _check_rows(df):
    assert df.attrs["labels"] == FINDINGS
    where = _by_image(df)
    assert sorted(where) == sorted(EXPECTED)
    for name, (pos, pid, follow, age, sex, view) in EXPECTED.items():
        row = df.iloc[where[name]]
        want = np.array([1.0 if f in pos else 0.0 for f in FINDINGS], np.float32)
        np.testing.assert_array_equal(row[FINDINGS].to_numpy(np.float32), want, err_msg=name)
        assert (row["patient_id"], row["follow_up"], row["age"], row["sex"], row["view"]) == \
            (pid, follow, age, sex, view), name
        assert Path(row["path"]).is_absolute() and Path(row["path"]).name == name


@pytest.mark.parametrize("variant", ["v2020", "2017_trailing_header", "2017_trailing_everywhere",
                                     "trailing_rows_only", "bom_crlf"])
def test_literal_data_entry_lines(tmp_path, variant):
    """The v2020 file (11 fields), the 2017 file (header with a trailing comma, an empty 12th
    column), rows with a trailing comma under an 11-field header (which pandas would otherwise
    read with the image name as the index, shifting every column), and a BOM with CRLF ends."""
    kw = {}
    if variant.startswith("2017"):
        kw = {"entry": "Data_Entry_2017.csv", "header": HEADER + ","}
        if variant == "2017_trailing_everywhere":
            kw["rows"] = [r + "," for r in ROWS]
    elif variant == "trailing_rows_only":
        kw = {"rows": [r + "," for r in ROWS]}
    elif variant == "bom_crlf":
        kw = {"prefix": "\ufeff", "eol": "\r\n"}
    root = _write(tmp_path / "nih", **kw)
    df = nih.load_table(root, val_fraction=0.0)
    _check_rows(df)
    assert not [c for c in df.columns if str(c).startswith("Unnamed")]
    assert {n for n, s in zip(df["image"], df["split"]) if s == "test"} == set(TEST_LIST)
    assert {n for n, s in zip(df["image"], df["split"]) if s == "train"} == set(TRAIN_VAL_LIST)


def test_flattened_images_folder_and_lists_with_bom_and_crlf(tmp_path):
    """Some mirrors keep all PNGs in one images/ folder; a list re-saved on Windows has CRLF ends
    and may start with a BOM (which once stuck to the first name, silently dropping its image)."""
    root = tmp_path / "nih"
    _write(root, images=[])
    for r in ROWS:
        _png(root / "images" / r.split(",")[0])
    (root / "test_list.txt").write_bytes(("\ufeff" + "\r\n".join(TEST_LIST) + "\r\n").encode("utf-8"))
    (root / "train_val_list.txt").write_bytes(("\ufeff" + "\r\n".join(TRAIN_VAL_LIST)).encode("utf-8"))
    df = nih.load_table(root, val_fraction=0.0)
    _check_rows(df)
    assert {n for n, s in zip(df["image"], df["split"]) if s == "test"} == set(TEST_LIST)


# ----------------------------------------------------------------------------- splits

def _many(tmp_path, patients=40):
    """``patients`` patients with 1..3 images each; official test = every fifth patient."""
    rows, test, trainval = [], [], []
    for pid in range(1, patients + 1):
        for f in range(1 + pid % 3):
            name = f"{pid:08d}_{f:03d}.png"
            finding = "Mass" if pid % 2 else "No Finding"
            rows.append(f"{name},{finding},{f},{pid},40,F,PA,2500,2048,0.168,0.168")
            (test if pid % 5 == 0 else trainval).append(name)
    return _write(tmp_path / "many", rows=rows, test=test, trainval=trainval), rows, test, trainval


def _patients(df, split):
    return set(df.loc[df["split"] == split, "patient_id"])


def test_official_split_val_by_image_and_by_patient(tmp_path):
    root, rows, test, trainval = _many(tmp_path)
    n_trainval_patients = len({int(n[:8]) for n in trainval})  # 32 of the 40 patients
    assert n_trainval_patients == 32
    for by in ("image", "patient"):
        df = nih.load_table(root, val_fraction=0.25, val_by=by, seed=3)
        assert len(df) == len(rows) == 80
        assert set(df.loc[df["split"] == "test", "image"]) == set(test)  # the list, untouched
        assert set(df.loc[df["split"] != "test", "image"]) == set(trainval)
        if by == "image":
            assert (df["split"] == "val").sum() == round(0.25 * len(trainval))
        else:
            assert not _patients(df, "train") & _patients(df, "val")
            assert len(_patients(df, "val")) == round(0.25 * n_trainval_patients) == 8
        assert not (_patients(df, "train") | _patients(df, "val")) & _patients(df, "test")
    # seeded: same seed, same split; another seed, another one
    a = nih.load_table(root, val_fraction=0.25, val_by="patient", seed=3)["split"].tolist()
    b = nih.load_table(root, val_fraction=0.25, val_by="patient", seed=3)["split"].tolist()
    c = nih.load_table(root, val_fraction=0.25, val_by="patient", seed=4)["split"].tolist()
    assert a == b and a != c
    # by image, some patient has images on both sides for some seed (the fzlpr protocol)
    leaks = [bool(_patients(d, "train") & _patients(d, "val"))
             for d in (nih.load_table(root, val_fraction=0.25, val_by="image", seed=s) for s in range(4))]
    assert any(leaks)


def test_random_split_is_patient_disjoint_with_the_fractions(tmp_path):
    root, _, _, _ = _many(tmp_path)
    df = nih.load_table(root, split="random", fractions=(0.5, 0.25, 0.25), seed=1)
    assert len(df) == 80
    train, val, test = (_patients(df, s) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert (len(train), len(val), len(test)) == (20, 10, 10)  # of 40 patients
    # every image of a patient lands in the patient's split
    assert df.groupby("patient_id")["split"].nunique().max() == 1


def test_bad_split_options(tmp_path):
    root = _write(tmp_path / "nih")
    with pytest.raises(DataError, match="split must be"):
        nih.load_table(root, split="kfold")
    with pytest.raises(DataError, match="val_by"):
        nih.load_table(root, val_by="study")
    with pytest.raises(DataError, match="missing must be"):
        nih.load_table(root, missing="ignore")


# ----------------------------------------------------------------------------- missing files

def test_missing_image_raises_or_is_dropped(tmp_path):
    root = _write(tmp_path / "nih")
    gone = next(root.glob("images_*/images/00000003_000.png"))
    gone.unlink()
    with pytest.raises(DataError, match="00000003_000.png") as err:
        nih.load_table(root)
    assert "1 image(s) listed in Data_Entry_2017_v2020.csv" in str(err.value)
    df = nih.load_table(root, missing="drop", val_fraction=0.0)
    assert sorted(df["image"]) == sorted(set(EXPECTED) - {"00000003_000.png"})
    assert (df["split"] == "test").sum() == 3


# ----------------------------------------------------------------------------- bad files

def test_renamed_header_column_names_file_and_column(tmp_path):
    root = _write(tmp_path / "nih", header=HEADER.replace("Finding Labels", "Finding_Labels"))
    with pytest.raises(DataError, match="Finding Labels") as err:
        nih.load_table(root)
    assert "Data_Entry_2017_v2020.csv" in str(err.value)


def test_unknown_finding_names_file_row_and_label(tmp_path):
    rows = list(ROWS)
    rows[3] = "00000002_000.png,Pleural Thickening,0,2,81,M,PA,2500,2048,0.171,0.171"  # real spelling has _
    root = _write(tmp_path / "nih", rows=rows)
    with pytest.raises(DataError, match="row 5") as err:  # line 5 of the file: header + 4th row
        nih.load_table(root)
    msg = str(err.value)
    assert "Data_Entry_2017_v2020.csv" in msg and "'Pleural Thickening'" in msg and "00000002_000.png" in msg


def test_missing_list_or_entry_file(tmp_path):
    root = _write(tmp_path / "nih")
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt"):
        nih.load_table(root)
    (root / "Data_Entry_2017_v2020.csv").unlink()
    with pytest.raises(DataError, match="Data_Entry_2017_v2020.csv"):
        nih.load_table(root)


# ----------------------------------------------------------------------------- BBox_List_2017.csv

@pytest.mark.parametrize("trailing", ["", ",,,"])
def test_bbox_literal_lines(tmp_path, trailing):
    """The real file: 9 header fields for 6 values per row (rows with or without the empty
    trailing fields); "Infiltrate" is the box file's spelling of Infiltration."""
    root = tmp_path / "nih"
    root.mkdir()
    (root / "BBox_List_2017.csv").write_text(
        "\n".join([BBOX_HEADER] + [r + trailing for r in BBOX_ROWS]) + "\n")
    df = nih.load_boxes(root)
    assert df["image"].tolist() == ["00013118_008.png", "00000661_000.png", "00020259_002.png",
                                    "00010815_006.png"]
    assert df["label"].tolist() == ["Atelectasis", "Cardiomegaly", "Infiltrate", "Mass"]
    assert df["finding"].tolist() == ["Atelectasis", "Cardiomegaly", "Infiltration", "Mass"]
    np.testing.assert_array_equal(df[["x", "y", "w", "h"]].to_numpy(np.float64), [
        [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661],
        [298.847457627119, 437.459894729873, 548.881355932203, 428.474576271186],
        [611.555555555556, 535.077934027778, 249.173333333333, 199.111111111111],
        [311.182222222222, 241.531267361111, 146.773333333333, 256.0]])


def test_bbox_unknown_label_names_file_line_and_label(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    rows = list(BBOX_ROWS)
    rows[2] = rows[2].replace("Infiltrate", "Infiltrates")
    (root / "BBox_List_2017.csv").write_text("\n".join([BBOX_HEADER] + rows))
    with pytest.raises(DataError, match="line 4") as err:
        nih.load_boxes(root)
    msg = str(err.value)
    assert "BBox_List_2017.csv" in msg and "'Infiltrates'" in msg and "00020259_002.png" in msg


def test_bbox_bad_header_and_bad_number(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    path = root / "BBox_List_2017.csv"
    path.write_text("\n".join(["Image,Finding Label,Bbox [x,y,w,h],,,"] + BBOX_ROWS))
    with pytest.raises(DataError, match="'Image Index'") as err:
        nih.load_boxes(root)
    assert "BBox_List_2017.csv" in str(err.value)
    rows = list(BBOX_ROWS)
    rows[1] = rows[1].replace("548.881355932203", "n/a")
    path.write_text("\n".join([BBOX_HEADER] + rows))
    with pytest.raises(DataError, match=r"line 3 \(image 00000661_000.png\): box w 'n/a'"):
        nih.load_boxes(root)
