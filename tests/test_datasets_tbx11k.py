"""TBX11K: phantom layout, COCO JSON boxes, labels, splits, detection subset, JSON errors,
manifest."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest

from cxr_keras.data import manifests, phantom
from cxr_keras.data.datasets import tbx11k
from cxr_keras.data.images import read_image
from cxr_keras.io import DataError

SIZE, SEED, N = 64, 1, 60


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("tbx11k")
    tbx11k.write_phantom(out, n=N, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


def _lines(path):
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _json_boxes(path):
    """file_name -> sorted [x, y, w, h, category_id - 1], parsed independently of the reader."""
    data = json.loads(path.read_text())
    names = {im["id"]: im["file_name"] for im in data["images"]}
    out = {n: [] for n in names.values()}
    for a in data["annotations"]:
        out[names[a["image_id"]]].append(list(a["bbox"]) + [a["category_id"] - 1])
    return {k: sorted(v) for k, v in out.items()}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_layout_counts_and_rgb(root):
    base = root / "TBX11K"
    counts = {f: len(list((base / "imgs" / f).glob("*.png"))) for f in ("health", "sick", "tb", "test")}
    assert sum(counts.values()) == N
    assert counts["test"] == round(N * 2800 / 11200)
    assert counts["tb"] >= 6 and counts["health"] > 0 and counts["sick"] > 0
    train, val = _lines(base / "lists/TBX11K_train.txt"), _lines(base / "lists/TBX11K_val.txt")
    assert len(train) + len(val) == N - counts["test"]
    assert not set(train) & set(val)
    assert len(_lines(base / "lists/all_test.txt")) == counts["test"]
    assert sorted(_lines(base / "lists/TBX11K_trainval.txt")) == sorted(train + val)
    for f in ("health", "sick", "tb"):  # every class on both sides of the official split
        assert any(x.startswith(f + "/") for x in train) and any(x.startswith(f + "/") for x in val)
    some = sorted((base / "imgs/tb").glob("*.png"))[0]
    raw = cv2.imdecode(np.fromfile(str(some), np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (SIZE, SIZE, 3)
    assert read_image(some).shape == (SIZE, SIZE)


def test_coco_categories(root):
    data = json.loads((root / "TBX11K/annotations/json/TBX11K_train.json").read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    assert cats[1] == "ActiveTuberculosis" and cats[2] == "ObsoletePulmonaryTuberculosis"
    assert cats.get(3) == "PulmonaryTuberculosis"
    assert data["annotations"] and all(a["category_id"] in (1, 2) for a in data["annotations"])
    assert all(im["width"] == SIZE and im["height"] == SIZE for im in data["images"])
    for a in data["annotations"]:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) and a["iscrowd"] == 0


def test_labels_and_boxes_match_files(root):
    base = root / "TBX11K"
    df = tbx11k.load_table(root)
    assert df.attrs["classes"] == ["healthy", "sick_non_tb", "tb"]
    assert df.attrs["box_classes"] == ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]
    train, val = _lines(base / "lists/TBX11K_train.txt"), _lines(base / "lists/TBX11K_val.txt")
    assert sorted(df["image"]) == sorted(train + val)
    folder_label = {"health": 0, "sick": 1, "tb": 2}
    assert all(r.label == folder_label[r.image.split("/")[0]] for r in df.itertuples())
    boxes = {**_json_boxes(base / "annotations/json/TBX11K_train.json"),
             **_json_boxes(base / "annotations/json/TBX11K_val.json")}
    n_boxes = 0
    for r in df.itertuples():
        assert sorted(r.boxes) == boxes[r.image]
        assert (len(r.boxes) > 0) == (r.label == 2)
        n_boxes += len(r.boxes)
    assert n_boxes == sum(len(v) for v in boxes.values()) > 0


def test_boxes_are_the_renderers(root):
    df = tbx11k.load_table(root).set_index("image")
    plan = [it for it in tbx11k.phantom_plan(N, SIZE, SEED) if it["folder"] == "tb"]
    kind = {"TB_Active": 0, "TB_Latent": 1}
    for item in plan[:4]:
        ph = phantom.render_chest(item["seed"], SIZE, item["findings"])
        expected = sorted([float(x), float(y), float(w), float(h), kind[f]]
                          for f, x, y, w, h in ph.boxes if f in kind)
        assert expected and sorted(df.loc[item["rel"], "boxes"]) == expected
        np.testing.assert_array_equal(read_image(root / "TBX11K/imgs" / item["rel"]), ph.image)


def test_official_split(root):
    base = root / "TBX11K"
    df = tbx11k.load_table(root)
    assert set(df.loc[df["split"] == "train", "image"]) == set(_lines(base / "lists/TBX11K_train.txt"))
    heldout = df[df["split"] != "train"]
    assert set(heldout["image"]) == set(_lines(base / "lists/TBX11K_val.txt"))
    for label, grp in heldout.groupby("label"):  # stratified halves
        assert (grp["split"] == "test").sum() == round(0.5 * len(grp))
    assert tbx11k.load_table(root, test_fraction=0.0)["split"].isin(["train", "val"]).all()


def test_tb_subset_for_detection(root):
    df = tbx11k.load_table(root, subset="tb", split="random")
    n_tb = len(list((root / "TBX11K/imgs/tb").glob("*.png")))
    assert len(df) == n_tb and (df["label"] == 2).all() and (df["boxes"].map(len) > 0).all()
    assert df["split"].value_counts().to_dict() == {
        s: c for s, c in {"train": round(0.8 * n_tb), "val": round(0.9 * n_tb) - round(0.8 * n_tb),
                          "test": n_tb - round(0.9 * n_tb)}.items() if c}


def test_missing_annotations_key_names_file_and_key(root, tmp_path):
    r = _copy(root, tmp_path / "t")
    path = r / "TBX11K/annotations/json/TBX11K_val.json"
    _edit_json(path, lambda d: d.pop("annotations"))
    with pytest.raises(DataError, match=r"TBX11K_val\.json.*'annotations'"):
        tbx11k.load_table(r)
    res = manifests.check("tbx11k", r)
    assert not res.usable and "annotations" in res.reader_error


def test_bad_json_fields(root, tmp_path):
    r = _copy(root, tmp_path / "t")
    path = r / "TBX11K/annotations/json/TBX11K_train.json"
    good = path.read_text()

    path.write_text(good[:-20])
    with pytest.raises(DataError, match=r"TBX11K_train\.json.*invalid JSON"):
        tbx11k.load_table(r)

    path.write_text(good)
    _edit_json(path, lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]))
    with pytest.raises(DataError, match=r"TBX11K_train\.json.*annotations\[0\].*'bbox'"):
        tbx11k.load_table(r)

    path.write_text(good)
    _edit_json(path, lambda d: d["annotations"][0].__setitem__("image_id", 10**6))
    with pytest.raises(DataError, match="'image_id'"):
        tbx11k.load_table(r)

    path.write_text(good)
    _edit_json(path, lambda d: d["categories"][0].__setitem__("name", "Nodule"))
    with pytest.raises(DataError, match=r"TBX11K_train\.json.*'categories'.*Nodule"):
        tbx11k.load_table(r)

    path.write_text(good)
    _edit_json(path, lambda d: d["images"][0].pop("file_name"))
    with pytest.raises(DataError, match=r"images\[0\].*'file_name'"):
        tbx11k.load_table(r)


def test_uncertain_category(root, tmp_path):
    r = _copy(root, tmp_path / "t")
    path = r / "TBX11K/annotations/json/TBX11K_train.json"
    data = json.loads(path.read_text())
    ann = dict(data["annotations"][0], id=10**5, category_id=3, bbox=[1.0, 2.0, 3.0, 4.0])
    data["annotations"].append(ann)
    path.write_text(json.dumps(data))
    name = {im["id"]: im["file_name"] for im in data["images"]}[ann["image_id"]]
    base_boxes = sorted(tbx11k.load_table(root).set_index("image").loc[name, "boxes"])
    with pytest.warns(UserWarning, match="PulmonaryTuberculosis"):
        dropped = tbx11k.load_table(r).set_index("image")
    assert sorted(dropped.loc[name, "boxes"]) == base_boxes
    latent = tbx11k.load_table(r, uncertain="latent").set_index("image")
    assert sorted(latent.loc[name, "boxes"]) == sorted(base_boxes + [[1.0, 2.0, 3.0, 4.0, 1]])
    with pytest.raises(DataError, match="uncertain"):
        tbx11k.load_table(r, uncertain="error")


def test_boxes_on_healthy_image_is_an_error(root, tmp_path):
    r = _copy(root, tmp_path / "t")
    path = r / "TBX11K/annotations/json/TBX11K_train.json"
    data = json.loads(path.read_text())
    healthy = next(im for im in data["images"] if im["file_name"].startswith("health/"))
    data["annotations"].append(dict(data["annotations"][0], id=10**5, image_id=healthy["id"]))
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=re.escape(healthy["file_name"])):
        tbx11k.load_table(r)


def test_manifest_check(root, tmp_path):
    res = manifests.check("tbx11k", root)
    assert res.usable, res.format()
    r = _copy(root, tmp_path / "t")
    (r / "TBX11K/annotations/json/TBX11K_train.json").unlink()
    res = manifests.check("tbx11k", r)
    assert not res.usable and any("TBX11K_train.json" in m for m in res.missing)


def test_bare_file_names_in_json_and_absent_tb_image(root, tmp_path):
    r = _copy(root, tmp_path / "t")
    path = r / "TBX11K/annotations/json/TBX11K_train.json"
    ref = tbx11k.load_table(root).set_index("image")["boxes"]

    def bare(d):
        for im in d["images"]:
            im["file_name"] = im["file_name"].rsplit("/", 1)[-1]
    _edit_json(path, bare)
    got = tbx11k.load_table(r).set_index("image")["boxes"]
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in ref.items()}

    data = json.loads(path.read_text())
    tb_ids = {im["id"] for im in data["images"] if im["file_name"].startswith("tb")}
    gone = next(im for im in data["images"] if im["id"] in tb_ids)
    data["images"].remove(gone)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != gone["id"]]
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=re.escape(gone["file_name"])):
        df = tbx11k.load_table(r, subset="tb")
    assert not df["image"].str.endswith("/" + gone["file_name"]).any()


# ----------------------------------------------------------------------------- literal official files

# COCO JSON text as the release has it: images with file_name relative to imgs/, width, height,
# id; annotations with id, image_id, category_id, bbox [x, y, w, h], area, iscrowd; the three
# categories (3 = PulmonaryTuberculosis, unused by the released boxes).
LITERAL_CATEGORIES = ('"categories": ['
                      '{"supercategory": "Tuberculosis", "id": 1, "name": "ActiveTuberculosis"}, '
                      '{"supercategory": "Tuberculosis", "id": 2, "name": "ObsoletePulmonaryTuberculosis"}, '
                      '{"supercategory": "Tuberculosis", "id": 3, "name": "PulmonaryTuberculosis"}]')
LITERAL_TRAIN_JSON = (
    '{"images": [{"file_name": "health/h0001.png", "width": 512, "height": 512, "id": 0}, '
    '{"file_name": "sick/s0002.png", "width": 512, "height": 512, "id": 1}, '
    '{"file_name": "tb/tb0003.png", "width": 512, "height": 512, "id": 2}, '
    '{"file_name": "tb/tb0004.png", "width": 512, "height": 512, "id": 3}], '
    '"annotations": [{"id": 0, "image_id": 2, "category_id": 1, "bbox": [259.0, 147.0, 83.0, 109.0], '
    '"area": 9047.0, "iscrowd": 0}, '
    '{"id": 1, "image_id": 2, "category_id": 2, "bbox": [136.5, 120.25, 60.5, 48.0], '
    '"area": 2904.0, "iscrowd": 0}, '
    '{"id": 2, "image_id": 3, "category_id": 1, "bbox": [300, 200, 57, 91], "area": 5187, "iscrowd": 0}], '
    + LITERAL_CATEGORIES + '}')
LITERAL_VAL_JSON = (
    '{"images": [{"file_name": "health/h0005.png", "width": 512, "height": 512, "id": 0}, '
    '{"file_name": "tb/tb0006.png", "width": 512, "height": 512, "id": 1}], '
    '"annotations": [{"id": 0, "image_id": 1, "category_id": 2, "bbox": [100.0, 110.0, 40.0, 42.0], '
    '"area": 1680.0, "iscrowd": 0}], ' + LITERAL_CATEGORIES + '}')
LITERAL_LISTS = {"TBX11K_train.txt": ["health/h0001.png", "sick/s0002.png", "tb/tb0003.png", "tb/tb0004.png"],
                 "TBX11K_val.txt": ["health/h0005.png", "tb/tb0006.png"]}
# By hand: image -> (label, boxes [x, y, w, h, class_index 0 active / 1 latent], official split).
LITERAL_EXPECTED = {
    "health/h0001.png": (0, [], "train"),
    "sick/s0002.png": (1, [], "train"),
    "tb/tb0003.png": (2, [[259.0, 147.0, 83.0, 109.0, 0], [136.5, 120.25, 60.5, 48.0, 1]], "train"),
    "tb/tb0004.png": (2, [[300.0, 200.0, 57.0, 91.0, 0]], "train"),
    "health/h0005.png": (0, [], "val"),
    "tb/tb0006.png": (2, [[100.0, 110.0, 40.0, 42.0, 1]], "val"),
}


def _write_literal(base, bom="", eol="\n"):
    tbx = base / "TBX11K"
    (tbx / "annotations/json").mkdir(parents=True)
    (tbx / "lists").mkdir()
    for name, text in (("TBX11K_train.json", LITERAL_TRAIN_JSON), ("TBX11K_val.json", LITERAL_VAL_JSON)):
        (tbx / "annotations/json" / name).write_bytes((bom + text).encode("utf-8"))
    for name, lines in LITERAL_LISTS.items():
        (tbx / "lists" / name).write_bytes((bom + eol.join(lines) + eol).encode("utf-8"))
    for rel in LITERAL_EXPECTED:
        (tbx / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tbx / "imgs" / rel).write_bytes(b"placeholder")  # the reader checks existence, never decodes
    return base


@pytest.mark.parametrize("bom,eol", [("", "\n"), ("\ufeff", "\r\n")], ids=["plain", "bom_crlf"])
def test_literal_coco_json_and_lists(tmp_path, bom, eol):
    root = _write_literal(tmp_path, bom, eol)
    df = tbx11k.load_table(root, test_fraction=0.0)
    assert df.attrs["classes"] == ["healthy", "sick_non_tb", "tb"]
    assert df.attrs["box_classes"] == ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]
    assert sorted(df["image"]) == sorted(LITERAL_EXPECTED)
    for row in df.itertuples():
        label, boxes, official = LITERAL_EXPECTED[row.image]
        assert (row.label, row.official_split, row.split) == (label, official, official)
        assert sorted(row.boxes) == sorted(boxes), row.image
        assert row.path == str((tmp_path / "TBX11K/imgs" / row.image).resolve())
    tb = tbx11k.load_table(root, subset="tb", test_fraction=0.0)
    assert sorted(tb["image"]) == ["tb/tb0003.png", "tb/tb0004.png", "tb/tb0006.png"]
