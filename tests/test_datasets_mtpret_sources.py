"""mtpret's other datasets: Shenzhen, Montgomery as an image source, Indiana (NLM XML and Kaggle
CSVs), RSNA Bone Age and DeepCovid. Each reader on its phantom (tiny) and on hand-written
metadata with the real files' quirks (the readers never open an image, so empty files stand in
for them); the bone-age phantom's age cue; ``data check``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_keras.data import datasets, load_table, manifests, phantom, write_phantom
from cxr_keras.data.datasets import deepcovid, indiana, rsna_boneage, shenzhen
from cxr_keras.io import DataError

N, SIZE = 12, 32


def _touch(root, *names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- phantoms

@pytest.mark.parametrize("name", ["shenzhen", "indiana", "rsna_boneage", "deepcovid"])
def test_phantom_is_read_back_and_checks_usable(name, tmp_path):
    out = write_phantom(name, tmp_path, n=N, size=SIZE, seed=1, workers=1, progress=False)
    df = load_table(name, out)
    assert len(df) == N and df["path"].map(lambda p: p.endswith((".png", ".jpg"))).all()
    assert df.attrs["dataset"] == name
    res = manifests.check(name, out)
    assert res.usable and not res.unexpected, res.format()
    if name == "shenzhen":
        plan = shenzhen.phantom_plan(N, SIZE, 1)
        got = df.set_index("image")
        for item in plan:
            r = got.loc[item["name"]]
            assert (r.label, r.sex, r.reading) == (item["label"], item["sex"], item["reading"])
            assert r.age == pytest.approx(item["age"])
    if name == "deepcovid":
        plan = deepcovid.phantom_plan(N, SIZE, 1)
        assert sorted(df["label"]) == sorted(p["label"] for p in plan)
        for split in ("train", "test"):  # both classes in each official split
            assert {p["label"] for p in plan if p["split"] == split} == {0, 1}
    if name == "rsna_boneage":
        plan = {p["image_id"]: p for p in rsna_boneage.phantom_plan(N, SIZE, 1)}
        for r in df.itertuples():
            assert r.split == plan[r.image_id]["split"] and r.male == plan[r.image_id]["male"]
            want = np.nan if r.split == "test" else plan[r.image_id]["boneage"]
            np.testing.assert_allclose(r.boneage, want)


def test_indiana_kaggle_phantom_matches_the_nlm_one(tmp_path):
    nlm = load_table("indiana", indiana.write_phantom(tmp_path / "a", N, SIZE, 2, 1, False))
    kag = load_table("indiana", indiana.write_phantom(tmp_path / "b", N, SIZE, 2, 1, False,
                                                      layout="kaggle"))
    assert nlm.attrs["layout"] == "nlm" and kag.attrs["layout"] == "kaggle"
    cols = ["uid", "mesh", "problems", "impression", "normal"]
    a = nlm.sort_values("image")[cols].reset_index(drop=True)
    b = kag.assign(image=kag["image"]).sort_values("image")[cols].reset_index(drop=True)
    assert sorted(a["uid"]) == sorted(b["uid"])
    assert a.groupby("uid")["mesh"].first().equals(b.groupby("uid")["mesh"].first())
    assert set(kag["projection"]) == {"Frontal", "Lateral"} and nlm["projection"].isna().all()
    frontal = load_table("indiana", tmp_path / "b", views="frontal")
    assert len(frontal) == int((kag["projection"] == "Frontal").sum())


def test_hand_phantom_age_cue():
    # hand-written: the carpal schedule and fusion age of hand_maturity
    assert [phantom.hand_maturity(12 * y)["carpals"] for y in (0, 1, 2.5, 5, 7, 12)] == [0, 2, 3, 6, 7, 8]
    assert phantom.hand_maturity(16 * 12)["physis"] == 0 == phantom.hand_maturity(228)["physis"]
    assert phantom.hand_maturity(24)["physis"] == pytest.approx(0.012 * (14 / 16) ** 0.5)
    young, old = (phantom.render_hand(5, 64, age) for age in (24, 200))
    assert young.shape == (64, 64) and young.dtype == np.uint8
    assert np.array_equal(young, phantom.render_hand(5, 64, 24))
    assert (old > 128).sum() > 1.5 * (young > 128).sum()  # a larger, denser skeleton
    with pytest.raises(ValueError, match="age_months"):
        phantom.render_hand(0, 64, 300)


# ----------------------------------------------------------------------------- real quirks

def test_shenzhen_readings_as_written(tmp_path):
    base = tmp_path / "ChinaSet_AllFiles"
    _touch(base / "CXR_png", "CHNCXR_0001_0.png", "CHNCXR_0002_1.png", "CHNCXR_0003_1.png",
           "CHNCXR_0004_0.png", "Thumbs.db")
    _write(base / "ClinicalReadings/CHNCXR_0001_0.txt", "male 35yrs\nnormal\n")
    _write(base / "ClinicalReadings/CHNCXR_0002_1.txt", "Female, 24yrs\r\n\r\nSTB,ATB in left upper field")
    _write(base / "ClinicalReadings/CHNCXR_0003_1.txt", "male 8month\nPTB in the right upper field\n")
    df = load_table("shenzhen", tmp_path).set_index("patient_id")  # 0004 has no reading
    assert df["label"].tolist() == [0, 1, 1, 0] and (df["split"] == "train").all()
    assert df["sex"].tolist()[:3] == ["M", "F", "M"] and pd.isna(df.loc[4, "sex"])
    assert df.loc[1, "age"] == 35 and df.loc[2, "age"] == 24 and df.loc[3, "age"] == pytest.approx(8 / 12)
    assert df.loc[2, "reading"] == "STB,ATB in left upper field" and df.loc[1, "reading"] == "normal"
    assert shenzhen.parse_reading("male 45 yrs\nnormal")["age"] == 45
    _touch(base / "CXR_png", "CHNCXR_0005.png")
    with pytest.warns(UserWarning, match="CHNCXR_0005.png"):
        assert len(load_table("shenzhen", base)) == 4  # the folder itself as root


def test_montgomery_as_an_image_source_needs_no_masks(tmp_path):
    base = tmp_path / "MontgomerySet"
    _touch(base / "CXR_png", "MCUCXR_0001_0.png", "MCUCXR_0002_1.png")
    _write(base / "ClinicalReadings/MCUCXR_0002_1.txt",
           "Patient's Sex: F\nPatient's Age: 040Y\nright upper lobe infiltrate\n")
    with pytest.raises(DataError, match="mask file"):
        load_table("montgomery", tmp_path)
    df = load_table("montgomery", tmp_path, split="train", masks=False)
    assert "mask_columns" not in df.attrs and "mask_left" not in df
    assert df["label"].tolist() == [0, 1] and df.loc[1, "age"] == 40 and df.loc[1, "sex"] == "F"


XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic"><Abstract>
         <AbstractText Label="COMPARISON">None.</AbstractText>
         <AbstractText Label="INDICATION">Positive TB test</AbstractText>
         <AbstractText Label="FINDINGS">{findings}</AbstractText>
         <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
      </Abstract></Article>
   </MedlineCitation>
   <MeSH>{mesh}<automatic>cardiomegaly</automatic></MeSH>
   {images}
</eCitation>
"""


def test_indiana_nlm_reports_as_written(tmp_path):
    png = tmp_path / "NLMCXR_png"
    _touch(png, "CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png", "CXR10_IM-0002-1001.png",
           "CXR7_1_IM-2263-1001.png")
    rep = tmp_path / "NLMCXR_reports/ecgen-radiology"
    _write(rep / "1.xml", XML.format(
        uid=1, findings="The cardiac silhouette and mediastinum size are within normal limits.",
        mesh="<major>normal</major>",
        images='<parentImage id="CXR1_1_IM-0001-3001"><caption>PA</caption></parentImage>'
               '<parentImage id="CXR1_1_IM-0001-4001"/>'))
    _write(rep / "10.xml", XML.format(
        uid=10, findings="",
        mesh="<major>Cardiomegaly/borderline   \t\n</major><major>Lung/hypoinflation/mild</major>",
        images='<parentImage id="CXR10_IM-0002-1001"/><parentImage id="CXR10_IM-0002-2001"/>'))
    _write(rep / "12.xml", XML.format(uid=12, findings="x", mesh="<major>normal</major>", images=""))
    df = load_table("indiana", tmp_path).set_index("image")
    assert df.attrs["layout"] == "nlm" and df.attrs["reports"] == 3
    assert df.attrs["images_not_found"] == 1  # CXR10_IM-0002-2001 is listed, not released
    assert df["uid"].to_dict() == {"CXR10_IM-0002-1001.png": 10, "CXR1_1_IM-0001-3001.png": 1,
                                   "CXR1_1_IM-0001-4001.png": 1, "CXR7_1_IM-2263-1001.png": 7}
    r10 = df.loc["CXR10_IM-0002-1001.png"]
    assert r10.mesh == "Cardiomegaly/borderline;Lung/hypoinflation/mild"
    assert r10.problems == "Cardiomegaly;Lung" and r10.normal == 0.0 and pd.isna(r10.findings)
    assert df.loc["CXR1_1_IM-0001-3001.png", "normal"] == 1.0
    assert df.loc["CXR1_1_IM-0001-3001.png", "indication"] == "Positive TB test"
    assert np.isnan(df.loc["CXR7_1_IM-2263-1001.png", "normal"])  # no report
    _write(rep / "13.xml", "<eCitation><uId id='CXR13'/>")
    with pytest.raises(DataError, match="13.xml"):
        load_table("indiana", tmp_path)
    with pytest.raises(DataError, match="Kaggle"):
        load_table("indiana", tmp_path, views="frontal")


REPORTS = '''uid,MeSH,Problems,image,indication,comparison,findings,impression
1,normal,normal,Xray Chest PA and Lateral,Positive TB test,None.,"The cardiac silhouette \
is normal. There is no pulmonary edema, no focal consolidation.",Normal chest x-XXXX.
2,Cardiomegaly/borderline;Pulmonary Artery/enlarged,Cardiomegaly;Pulmonary Artery,\
"Chest, 2 views, frontal and lateral",Preop bariatric surgery.,None.,"Borderline cardiomegaly.
Midline sternotomy XXXX.",Stable borderline cardiomegaly.
'''
PROJECTIONS = '''uid,filename,projection
1,1_IM-0001-4001.dcm.png,Frontal
1,1_IM-0001-3001.dcm.png,Lateral
2,2_IM-0652-1001.dcm.png,Frontal
3,3_IM-1384-1001.dcm.png,Frontal
'''


def test_indiana_kaggle_csvs_as_written(tmp_path):
    _write(tmp_path / "indiana_reports.csv", REPORTS)
    _write(tmp_path / "indiana_projections.csv", PROJECTIONS)
    img = tmp_path / "images/images_normalized"
    _touch(img, "1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png", "2_IM-0652-1001.dcm.png")
    with pytest.raises(DataError, match="3_IM-1384-1001.dcm.png"):
        load_table("indiana", tmp_path)
    df = load_table("indiana", tmp_path, missing="drop").set_index("image")
    assert df["projection"].tolist() == ["Frontal", "Lateral", "Frontal"]
    r = df.loc["2_IM-0652-1001.dcm.png"]
    assert r.mesh == "Cardiomegaly/borderline;Pulmonary Artery/enlarged"
    assert r.problems == "Cardiomegaly;Pulmonary Artery" and r.normal == 0.0
    assert r.findings == "Borderline cardiomegaly. Midline sternotomy XXXX."  # quoted line break
    assert df.loc["1_IM-0001-4001.dcm.png", "normal"] == 1.0
    _write(tmp_path / "indiana_projections.csv", PROJECTIONS.replace("3001.dcm.png,Lateral", "3001.dcm.png,lat"))
    with pytest.raises(DataError, match=r"indiana_projections.csv: line 3, column 'projection'"):
        load_table("indiana", tmp_path, missing="drop")


def test_rsna_boneage_csvs_as_distributed(tmp_path):
    _write(tmp_path / "boneage-training-dataset.csv", "id,boneage,male\n1377,180,False\n1378,12,True\n")
    _touch(tmp_path, "boneage-training-dataset/boneage-training-dataset/1377.png",
           "boneage-training-dataset/boneage-training-dataset/1378.png")
    val = tmp_path / "Bone Age Validation Set"
    _write(val / "Validation Dataset.csv", "\ufeffImage ID,male,Bone Age (months)\n1386,FALSE,30\n1392,TRUE,168.934\n")
    _touch(val, "boneage-validation-dataset-1/1386.png", "boneage-validation-dataset-2/1392.png")
    _write(tmp_path / "boneage-test-dataset.csv", "Case ID,Sex\n4360,M\n4361,F\n")
    _touch(tmp_path, "boneage-test-dataset/4360.png", "boneage-test-dataset/4361.png")
    df = load_table("rsna_boneage", tmp_path)
    assert df["split"].tolist() == ["train", "train", "val", "val", "test", "test"]
    assert df["image_id"].tolist() == [1377, 1378, 1386, 1392, 4360, 4361]
    np.testing.assert_allclose(df["boneage"], [180, 12, 30, 168.934, np.nan, np.nan])
    assert df["male"].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert df["path"].iloc[3].endswith("boneage-validation-dataset-2/1392.png")
    _write(tmp_path / "boneage-training-dataset.csv", "id,boneage,male\n1377,180,False\n1378,12,yes\n")
    with pytest.raises(DataError, match=r"boneage-training-dataset.csv: line 3, column 'male': 'yes'"):
        load_table("rsna_boneage", tmp_path)
    _write(tmp_path / "boneage-training-dataset.csv", "id,age,male\n1377,180,False\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['boneage'\]"):
        load_table("rsna_boneage", tmp_path)


def test_deepcovid_folders_as_downloaded(tmp_path):
    base = tmp_path / "data_upload_v3"
    _touch(base, "train/covid/1-s2.0-S0929664620300449-gr2_lrg-a.jpg", "train/covid/covid-19-pneumonia-15-PA.PNG",
           "train/covid/.DS_Store", "train/non/patient00001_study1_view1_frontal.jpg",
           "train/non/patient00002_study1_view1_frontal.jpg", "train/non/Thumbs.db",
           "test/covid/ryct.2020200034.fig2.jpeg", "test/non/patient64541_study1_view1_frontal.jpg")
    df = load_table("deepcovid", tmp_path, val_fraction=0.5, seed=0)
    assert len(df) == 6 and df.attrs["classes"] == ["non_covid", "covid"]
    by = df.groupby(["split", "label"]).size().to_dict()
    assert by == {("train", 0): 1, ("train", 1): 1, ("val", 0): 1, ("val", 1): 1,
                  ("test", 0): 1, ("test", 1): 1}
    assert (load_table("deepcovid", base, val_fraction=0)["split"] != "val").all()
    _touch(base, "train/non/readme.txt")
    with pytest.raises(DataError, match="readme.txt"):
        load_table("deepcovid", tmp_path)
    (base / "train/non/readme.txt").unlink()
    for f in (base / "test/covid").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no images in .*test/covid"):
        load_table("deepcovid", tmp_path)


def test_every_dataset_with_a_manifest_has_a_reader():
    assert set(manifests.available()) == set(datasets.NAMES)
