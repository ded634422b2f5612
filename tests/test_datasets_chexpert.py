"""CheXpert phantom writer + reader: layout, uncertainty/blank policies, splits, bad input."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_keras.data import manifests
from cxr_keras.data.datasets import chexpert
from cxr_keras.data.images import read_image
from cxr_keras.io import DataError

N = 60
FOLDER = "CheXpert-v1.0-small"
OBS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
       "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
       "Pleural Other", "Fracture", "Support Devices"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("chexpert")
    chexpert.write_phantom(out, n=N, size=64, seed=3, workers=1, progress=False)
    return out


def read_rows(root, name):
    with open(Path(root) / FOLDER / name, newline="") as f:
        return list(csv.DictReader(f))


def expected(rows, labels, policy, blank):
    """Independent reference: policy is a str or a dict label -> str."""
    out = np.zeros((len(rows), len(labels)))
    for i, r in enumerate(rows):
        for j, k in enumerate(labels):
            v = r[k]
            p = policy if isinstance(policy, str) else policy[k]
            if v == "":
                out[i, j] = 0.0 if blank == "zeros" else np.nan
            elif float(v) == -1.0:
                out[i, j] = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[p]
            else:
                out[i, j] = float(v)
    return out


def table_in_csv_order(df, rows):
    """Rows of the table in the order of the CSV rows (matched by path)."""
    by_path = {Path(p).relative_to(Path(df.attrs["root"])).as_posix(): i for i, p in enumerate(df["path"])}
    return [by_path[r["Path"]] for r in rows]


def test_layout_counts_and_columns(root):
    train, valid = read_rows(root, "train.csv"), read_rows(root, "valid.csv")
    header = open(root / FOLDER / "train.csv").readline().strip().split(",")
    assert header == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + OBS
    assert len(train) + len(valid) == N and len(valid) >= 2
    assert len(list((root / FOLDER).glob("*/patient*/study*/*.jpg"))) == N
    assert all(r["Path"].startswith(f"{FOLDER}/train/patient") for r in train)
    assert all(r["Path"].startswith(f"{FOLDER}/valid/patient") for r in valid)
    # the phantom has every state in train, and expert-style labels (no -1, no blank) in valid
    values = {r[k] for r in train for k in OBS[1:]}
    assert values == {"1.0", "0.0", "-1.0", ""}
    assert {r[k] for r in valid for k in OBS} <= {"1.0", "0.0"}
    laterals = [r for r in train + valid if r["Frontal/Lateral"] == "Lateral"]
    assert laterals and all(r["AP/PA"] == "" for r in laterals)
    assert {r["AP/PA"] for r in train if r["Frontal/Lateral"] == "Frontal"} <= {"AP", "PA"}

    df = chexpert.load_table(root)
    assert len(df) == N
    assert (df["split"] == "test").sum() == len(valid)
    assert ((df["split"] == "train") | (df["split"] == "val")).sum() == len(train)
    assert list(df.columns[:3]) == ["path", "split", "patient_id"]
    assert df.attrs["labels"] == OBS
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in df["path"])
    assert set(df["patient_id"]) == {r["Path"].split("/")[2] for r in train + valid}
    assert df["patient_id"].str.fullmatch(r"patient\d{5}").all()


def test_validation_is_drawn_by_patient_and_seeded(root):
    df = chexpert.load_table(root, val_fraction=0.25, seed=1)
    val, train = set(df.loc[df.split == "val", "patient_id"]), set(df.loc[df.split == "train", "patient_id"])
    assert val and not (val & train)
    n_train_patients = len({r["Path"].split("/")[2] for r in read_rows(root, "train.csv")})
    assert len(val) == round(0.25 * n_train_patients)
    again = chexpert.load_table(root, val_fraction=0.25, seed=1)
    other = chexpert.load_table(root, val_fraction=0.25, seed=2)
    assert (again["split"] == df["split"]).all()
    assert not (other["split"] == df["split"]).all()
    assert (chexpert.load_table(root, val_fraction=0.0)["split"] != "val").all()


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore", "mixed"])
@pytest.mark.parametrize("blank", ["zeros", "ignore"])
def test_uncertainty_and_blank_policies_exact(root, policy, blank):
    pol = chexpert.MIXED_POLICY if policy == "mixed" else policy
    df = chexpert.load_table(root, uncertain=pol, blank=blank)
    for name, split in (("train.csv", ("train", "val")), ("valid.csv", ("test",))):
        rows = read_rows(root, name)
        idx = table_in_csv_order(df, rows)
        assert df["split"].iloc[idx].isin(split).all()
        got = df[OBS].to_numpy(np.float64)[idx]
        want = expected(rows, OBS, pol, blank)
        np.testing.assert_array_equal(got, want)  # NaN == NaN in assert_array_equal


def test_mixed_policy_differs_from_both_pure_policies(root):
    rows = read_rows(root, "train.csv")
    assert any(r["Atelectasis"] == "-1.0" for r in rows)      # ones for Atelectasis
    assert any(r["Consolidation"] == "-1.0" for r in rows)    # zeros for Consolidation
    assert chexpert.MIXED_POLICY["Atelectasis"] == "ones" and chexpert.MIXED_POLICY["Edema"] == "ones"
    assert {v for k, v in chexpert.MIXED_POLICY.items() if k not in ("Atelectasis", "Edema")} == {"zeros"}
    mixed = chexpert.load_table(root, uncertain=chexpert.MIXED_POLICY, labels=chexpert.COMPETITION_LABELS)
    ones = chexpert.load_table(root, uncertain="ones", labels=chexpert.COMPETITION_LABELS)
    zeros = chexpert.load_table(root, uncertain="zeros", labels=chexpert.COMPETITION_LABELS)
    assert (mixed["Atelectasis"] == ones["Atelectasis"]).all()
    assert not (mixed["Atelectasis"] == zeros["Atelectasis"]).all()
    assert (mixed["Consolidation"] == zeros["Consolidation"]).all()
    assert not (mixed["Consolidation"] == ones["Consolidation"]).all()
    # a dict with a default behaves as the full dict
    short = chexpert.load_table(root, uncertain={"Atelectasis": "ones", "Edema": "ones", "default": "zeros"},
                                labels=chexpert.COMPETITION_LABELS)
    np.testing.assert_array_equal(short[list(chexpert.COMPETITION_LABELS)].to_numpy(),
                                  mixed[list(chexpert.COMPETITION_LABELS)].to_numpy())


def test_label_subset_and_frontal_only(root):
    df = chexpert.load_table(root, labels=chexpert.COMPETITION_LABELS)
    assert chexpert.COMPETITION_LABELS == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                           "Pleural Effusion")
    assert df.attrs["labels"] == list(chexpert.COMPETITION_LABELS)
    assert not set(OBS) - set(chexpert.COMPETITION_LABELS) & set(df.columns)
    rows = read_rows(root, "train.csv") + read_rows(root, "valid.csv")
    n_frontal = sum(r["Frontal/Lateral"] == "Frontal" for r in rows)
    assert 0 < n_frontal < len(rows)
    fr = chexpert.load_table(root, frontal_only=True)
    assert len(fr) == n_frontal and (fr["view"] == "Frontal").all()
    assert all("_frontal.jpg" in p for p in fr["path"])
    with pytest.raises(DataError, match="Lung Opacityy"):
        chexpert.load_table(root, labels=["Lung Opacityy"])


def test_lateral_views_are_rendered_differently(root):
    df = chexpert.load_table(root)
    lat = read_image(df.loc[df.view == "Lateral", "path"].iloc[0])
    fro = read_image(df.loc[df.view == "Frontal", "path"].iloc[0])
    assert lat.shape == fro.shape == (64, 64)
    def border(im):
        return np.concatenate([im[:, :12].ravel(), im[:, -12:].ravel()])
    assert border(lat).std() < 4.0           # air either side of the squeezed chest
    assert abs(float(border(lat).mean()) - float(fro.mean())) > 5


def test_full_size_folder_name_and_dataset_folder_as_root(tmp_path):
    chexpert.write_phantom(tmp_path, n=12, size=32, seed=0, workers=1, progress=False,
                           folder="CheXpert-v1.0")
    df = chexpert.load_table(tmp_path)
    assert len(df) == 12 and df.attrs["folder"] == "CheXpert-v1.0"
    assert all("/CheXpert-v1.0/" in p and Path(p).is_file() for p in df["path"])
    df2 = chexpert.load_table(tmp_path / "CheXpert-v1.0")
    assert list(df2["path"]) == list(df["path"])
    # a renamed dataset folder: Path still says CheXpert-v1.0/..., resolved against the real folder
    (tmp_path / "CheXpert-v1.0").rename(tmp_path / "mycopy")
    df3 = chexpert.load_table(tmp_path / "mycopy")
    assert all(Path(p).is_file() for p in df3["path"])
    with pytest.raises(DataError, match="CheXpert"):
        chexpert.load_table(tmp_path)


def copy_root(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def edit_csv(path, fn):
    lines = path.read_text().splitlines()
    fn(lines)
    path.write_text("\n".join(lines) + "\n")


def test_renamed_column_names_column_and_file(root, tmp_path):
    dst = copy_root(root, tmp_path)
    path = dst / FOLDER / "valid.csv"
    edit_csv(path, lambda lines: lines.__setitem__(0, lines[0].replace("Pleural Effusion", "Pleural_Effusion")))
    with pytest.raises(DataError) as e:
        chexpert.load_table(dst)
    assert "Pleural Effusion" in str(e.value) and "valid.csv" in str(e.value)


@pytest.mark.parametrize("bad", ["2.0", "yes", "-2"])
def test_unknown_label_value_names_line_and_column(root, tmp_path, bad):
    dst = copy_root(root, tmp_path)
    path = dst / FOLDER / "train.csv"
    col = OBS.index("Edema") + 5

    def corrupt(lines):
        cells = lines[7].split(",")
        cells[col] = bad
        lines[7] = ",".join(cells)
    edit_csv(path, corrupt)
    with pytest.raises(DataError) as e:
        chexpert.load_table(dst)
    msg = str(e.value)
    assert "train.csv" in msg and "line 8" in msg and "'Edema'" in msg and bad in msg


def test_bad_options(root):
    with pytest.raises(DataError, match="uncertain"):
        chexpert.load_table(root, uncertain="half")
    with pytest.raises(DataError, match="Edema"):
        chexpert.load_table(root, uncertain={"Atelectasis": "ones"}, labels=["Atelectasis", "Edema"])
    with pytest.raises(DataError, match="blank"):
        chexpert.load_table(root, blank="ones")


def test_manifest_check_on_phantom(root, tmp_path):
    res = manifests.check("chexpert", root)
    assert res.usable, res.format()
    assert res.table_summary["rows"] == N and res.table_summary["test"] == len(read_rows(root, "valid.csv"))
    assert not res.unexpected
    dst = copy_root(root, tmp_path)
    (dst / FOLDER / "valid.csv").unlink()
    res = manifests.check("chexpert", dst)
    assert not res.usable and any("valid.csv" in m for m in res.missing)
    dst2 = tmp_path / "copy2"
    shutil.copytree(root, dst2)
    next((dst2 / FOLDER / "train").glob("patient*/study*/*.jpg")).unlink()
    res = manifests.check("chexpert", dst2)
    assert not res.usable and "missing" in res.reader_error


# ----------------------------------------------------------------------------- literal official lines

LITERAL_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                  "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                  "Pleural Effusion,Pleural Other,Fracture,Support Devices")
LITERAL_TRAIN = [
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,",
    "CheXpert-v1.0-small/train/patient00005/study1/view1_frontal.jpg,Male,33,Frontal,PA,1.0,,0.0,,,,,,,,0.0,,,1.0",
]
LITERAL_VALID = [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
]
# Raw values of the lines above, by hand: label -> value; every other label is blank (None).
LITERAL_RAW = [
    {"No Finding": 1.0, "Pneumothorax": 0.0, "Support Devices": 1.0},
    {"Cardiomegaly": -1.0, "Lung Opacity": 1.0, "Edema": -1.0, "Consolidation": -1.0,
     "Atelectasis": -1.0, "Pleural Effusion": -1.0, "Fracture": 1.0},
    {"Lung Opacity": 1.0, "Consolidation": -1.0, "Fracture": 1.0},
    {"No Finding": 1.0, "Cardiomegaly": 0.0, "Pleural Effusion": 0.0, "Support Devices": 1.0},
    {"No Finding": 0.0, "Enlarged Cardiomediastinum": 1.0, "Cardiomegaly": 1.0, "Lung Opacity": 1.0,
     "Lung Lesion": 0.0, "Edema": 1.0, "Consolidation": 0.0, "Pneumonia": 0.0, "Atelectasis": 0.0,
     "Pneumothorax": 0.0, "Pleural Effusion": 0.0, "Pleural Other": 0.0, "Fracture": 0.0,
     "Support Devices": 0.0},
]
LITERAL_META = [  # path, split, patient, study, sex, age, view, projection
    ("train/patient00001/study1/view1_frontal.jpg",
     "train", "patient00001", "patient00001/study1", "Female", 68, "Frontal", "AP"),
    ("train/patient00002/study2/view1_frontal.jpg",
     "train", "patient00002", "patient00002/study2", "Female", 87, "Frontal", "AP"),
    ("train/patient00002/study1/view2_lateral.jpg",
     "train", "patient00002", "patient00002/study1", "Female", 83, "Lateral", ""),
    ("train/patient00005/study1/view1_frontal.jpg",
     "train", "patient00005", "patient00005/study1", "Male", 33, "Frontal", "PA"),
    ("valid/patient64541/study1/view1_frontal.jpg",
     "test", "patient64541", "patient64541/study1", "Male", 73, "Frontal", "AP"),
]


def _write_literal(base, folder="CheXpert-v1.0-small", path_prefix="CheXpert-v1.0-small/", eol="\n", bom=""):
    ds = base / folder
    for name, rows in (("train.csv", LITERAL_TRAIN), ("valid.csv", LITERAL_VALID)):
        rows = [path_prefix + r[len("CheXpert-v1.0-small/"):] for r in rows]
        ds.mkdir(parents=True, exist_ok=True)
        (ds / name).write_bytes((bom + eol.join([LITERAL_HEADER] + rows) + eol).encode("utf-8"))
    for rel, *_ in LITERAL_META:
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(b"placeholder")  # the reader checks existence, never decodes
    return ds


def _literal_expected(uncertain, blank):
    unc = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    out = np.full((len(LITERAL_RAW), len(OBS)), np.nan)
    for i, raw in enumerate(LITERAL_RAW):
        for j, k in enumerate(OBS):
            v = raw.get(k)
            out[i, j] = (0.0 if blank == "zeros" else np.nan) if v is None else (unc if v == -1.0 else v)
    return out


@pytest.mark.parametrize("layout", ["small", "full_paths_in_small_folder", "small_paths_in_full_folder",
                                    "bom_crlf"])
@pytest.mark.parametrize("uncertain,blank", [("ones", "zeros"), ("zeros", "ignore"), ("ignore", "ignore")])
def test_literal_official_lines(tmp_path, layout, uncertain, blank):
    """Literal lines of train.csv / valid.csv; Path prefixes of the -small and full downloads
    are resolved against whichever folder holds the CSV; BOM and CRLF line ends are read too."""
    kw = {"small": {}, "full_paths_in_small_folder": {"path_prefix": "CheXpert-v1.0/"},
          "small_paths_in_full_folder": {"folder": "CheXpert-v1.0"},
          "bom_crlf": {"eol": "\r\n", "bom": "\ufeff"}}[layout]
    ds = _write_literal(tmp_path, **kw)
    df = chexpert.load_table(tmp_path, uncertain=uncertain, blank=blank, val_fraction=0.0)
    assert len(df) == 5 and df.attrs["labels"] == OBS
    order = [list(df["path"]).index(str((ds / m[0]).resolve())) for m in LITERAL_META]
    np.testing.assert_array_equal(df.loc[order, OBS].to_numpy(np.float64),
                                  _literal_expected(uncertain, blank))
    got = df.loc[order, ["split", "patient_id", "study_id", "sex", "age", "view", "projection"]]
    assert [tuple(r) for r in got.itertuples(index=False)] == [m[1:] for m in LITERAL_META]


def test_literal_lines_frontal_only_and_subset(tmp_path):
    _write_literal(tmp_path)
    df = chexpert.load_table(tmp_path, frontal_only=True, labels=["Edema", "Fracture"],
                             uncertain="ones", blank="ignore", val_fraction=0.0)
    assert df.attrs["labels"] == ["Edema", "Fracture"]
    # rows 0, 1, 3, 4 of LITERAL_META (row 2 is the lateral view), labels by hand
    np.testing.assert_array_equal(df[["Edema", "Fracture"]].to_numpy(np.float64),
                                  [[np.nan, np.nan], [1.0, 1.0], [np.nan, np.nan], [1.0, 0.0]])
