"""The shard cache: exact bicubic content, index, parallel == serial, resume, bad files, masks."""

from __future__ import annotations

import hashlib
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_keras.data import load_table, write_phantom
from cxr_keras.data.cache import Cache, build_cache, resize_geometry
from cxr_keras.data.images import read_image, write_dicom, write_image
from cxr_keras.io import DataError

S, SHARD = 32, 8


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = write_phantom("nih", tmp_path_factory.mktemp("nih"), n=40, size=96, seed=0, progress=False)
    return load_table("nih", root)


@pytest.fixture(scope="module")
def built(nih, tmp_path_factory):
    """The same table cached by one process and by a pool of two."""
    base = tmp_path_factory.mktemp("caches")
    one = build_cache(nih, base / "w1", size=S, shard_size=SHARD, workers=1, progress=False)
    two = build_cache(nih, base / "w2", size=S, shard_size=SHARD, workers=2, progress=False)
    return one, two


def _shard_files(cache):
    return sorted((cache / "shards").glob("shard-*"))


def test_images_are_bicubic_resizes_of_the_decoded_files(nih, built):
    cache = Cache(built[0])
    images, masks = cache.load(cache.rows(include_bad=True))
    assert masks is None and images.dtype == np.uint8 and images.shape == (len(nih), S, S)
    for i, path in enumerate(nih["path"]):
        ref = cv2.resize(read_image(path), (S, S), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_array_equal(images[i], ref, err_msg=path)
    # not trivially satisfied: another interpolation gives other pixels
    area = cv2.resize(read_image(nih["path"][0]), (S, S), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(images[0], area)


def test_one_worker_and_two_workers_give_identical_caches(built):
    one, two = built
    names = [f.name for f in _shard_files(one)]
    assert names == [f.name for f in _shard_files(two)] and len(names) == 2 * 5
    for name in names:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(one / "shards" / name), np.load(two / "shards" / name))
        else:
            assert (one / "shards" / name).read_text() == (two / "shards" / name).read_text()
    a, b = Cache(one), Cache(two)
    assert a.meta["fingerprint"] == b.meta["fingerprint"] and a.meta["complete"] and b.meta["complete"]
    pd.testing.assert_frame_equal(a.index, b.index)
    assert a.verify() == [] and b.verify() == []


def test_index_and_targets_follow_the_table(nih, built):
    cache = Cache(built[1])
    idx = cache.index
    assert len(idx) == len(nih) == cache.meta["n"] and cache.meta["num_shards"] == 5
    assert idx["path"].tolist() == nih["path"].tolist()
    assert idx["split"].tolist() == nih["split"].tolist()
    assert idx["patient_id"].tolist() == nih["patient_id"].tolist()
    np.testing.assert_array_equal(idx["shard"], np.arange(len(nih)) // SHARD)
    np.testing.assert_array_equal(idx["offset"], np.arange(len(nih)) % SHARD)
    assert (idx["orig_h"] == 96).all() and (idx["orig_w"] == 96).all() and (idx["status"] == "ok").all()
    for path, sha in zip(nih["path"], idx["source_sha1"]):
        with open(path, "rb") as f:
            assert sha == hashlib.sha1(f.read()).hexdigest()
    labels = nih.attrs["labels"]
    assert cache.labels == labels and cache.size == S and cache.classes is None
    np.testing.assert_array_equal(cache.targets(cache.rows()), nih[labels].to_numpy(np.float32))
    assert cache.targets(cache.rows()).dtype == np.float32
    test = cache.rows("test")
    assert len(test) == (nih["split"] == "test").sum() > 0 and (test["split"] == "test").all()
    np.testing.assert_array_equal(cache.targets(test), nih.loc[test.index, labels].to_numpy(np.float32))
    # load gathers across shards in the rows' order
    pick = cache.rows().iloc[[33, 2, 17, 9, 2]]
    images, _ = cache.load(pick)
    for got, (s, o) in zip(images, zip(pick["shard"], pick["offset"])):
        np.testing.assert_array_equal(got, cache.images(s)[o])


def test_resume_rebuilds_only_unfinished_and_corrupt_shards(nih, built, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(built[0], out)
    before = {f.name: f.stat().st_mtime_ns for f in _shard_files(out)}
    arrays = {f.name: np.load(f) for f in _shard_files(out) if f.suffix == ".npy"}
    (out / "shards" / "shard-00001.json").unlink()
    corrupt = out / "shards" / "shard-00003.images.npy"
    data = bytearray(corrupt.read_bytes())
    data[-5] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    before[corrupt.name] = corrupt.stat().st_mtime_ns
    assert Cache(out).verify() != []

    build_cache(nih, out, size=S, shard_size=SHARD, workers=1, progress=False)
    after = {f.name: f.stat().st_mtime_ns for f in _shard_files(out)}
    assert after.keys() == before.keys()
    changed = sorted(n for n in after if after[n] != before[n])
    assert changed == ["shard-00001.images.npy", "shard-00001.json",
                       "shard-00003.images.npy", "shard-00003.json"]
    cache = Cache(out, verify=True)
    assert cache.verify() == []
    for name, arr in arrays.items():
        np.testing.assert_array_equal(np.load(out / "shards" / name), arr)
    assert "reused: 3" in (out / "report.txt").read_text()


def test_other_sources_need_overwrite(nih, tmp_path):
    out = tmp_path / "c"
    build_cache(nih.iloc[:16], out, size=S, shard_size=SHARD, workers=1, progress=False)
    with pytest.raises(DataError, match="overwrite=True"):
        build_cache(nih.iloc[:24], out, size=S, shard_size=SHARD, workers=1, progress=False)
    with pytest.raises(DataError, match="overwrite=True"):
        build_cache(nih.iloc[:16], out, size=S + 1, shard_size=SHARD, workers=1, progress=False)
    build_cache(nih.iloc[:24], out, size=S, shard_size=SHARD, workers=1, progress=False, overwrite=True)
    assert len(Cache(out, verify=True)) == 24 and len(_shard_files(out)) == 6


def test_incomplete_cache_cannot_be_opened(nih, tmp_path):
    out = build_cache(nih.iloc[:8], tmp_path / "c", size=S, shard_size=SHARD, workers=1, progress=False)
    meta = json.loads((out / "cache.json").read_text())
    meta["complete"] = False
    (out / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="prepare` again to resume"):
        Cache(out)
    with pytest.raises(DataError, match="no image cache"):
        Cache(tmp_path / "nowhere")


def _with_broken(nih, tmp_path, kind):
    table = nih.iloc[:12].copy()
    good = table["path"].iloc[5]
    if kind == "truncated":
        broken = tmp_path / "truncated.png"
        data = open(good, "rb").read()
        broken.write_bytes(data[: len(data) // 2])
    else:
        broken = tmp_path / "absent.png"
    table.iloc[5, table.columns.get_loc("path")] = str(broken)
    return table, str(broken)


@pytest.mark.parametrize("kind", ["truncated", "missing"])
def test_bad_source_raises_or_is_skipped(nih, tmp_path, kind):
    table, broken = _with_broken(nih, tmp_path, kind)
    with pytest.raises(DataError, match="row 5") as err:
        build_cache(table, tmp_path / "strict", size=S, shard_size=SHARD, workers=1, progress=False)
    assert broken in str(err.value)
    if kind == "truncated":  # raised in a pool worker, it reaches the caller intact
        with pytest.raises(DataError, match="row 5") as err:
            build_cache(table, tmp_path / "strict2", size=S, shard_size=SHARD, workers=2, progress=False)
        assert broken in str(err.value)

    out = build_cache(table, tmp_path / "lenient", size=S, shard_size=SHARD, workers=1, progress=False,
                      skip_bad=True)
    cache = Cache(out, verify=True)
    assert cache.index["status"].tolist() == ["ok"] * 5 + ["bad"] + ["ok"] * 6
    assert [b["path"] for b in cache.meta["bad"]] == [broken] and cache.meta["bad"][0]["error"]
    assert broken in (out / "report.txt").read_text() and "bad: 1" in (out / "report.txt").read_text()
    assert 5 not in cache.rows().index and 5 in cache.rows(include_bad=True).index
    images, _ = cache.load(cache.rows(include_bad=True))
    assert not images[5].any() and images[4].any() and images[6].any()
    marker = json.loads((out / "shards" / "shard-00000.json").read_text())
    assert marker["rows"][5]["status"] == "bad" and marker["rows"][4]["status"] == "ok"


def test_masks_are_nearest_resized_and_ored(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    refs = []
    for i in range(3):
        img = rng.integers(0, 256, (45, 37), dtype=np.uint8)
        left = np.zeros((45, 37), np.uint8)
        right = np.zeros((45, 37), np.uint8)
        left[5:40, 3 + i:15] = 255
        right[10:30, 20:33 - i] = 255
        right[2, 30] = 255  # single pixels: nearest keeps or drops them, never blurs them
        p, lp, rp = (tmp_path / f"{k}{i}.png" for k in ("img", "l", "r"))
        write_image(p, img), write_image(lp, left), write_image(rp, right)
        rows.append({"path": str(p), "split": "train", "left": str(lp),
                     "right": str(rp) if i != 2 else float("nan")})
        ref_l = cv2.resize(left, (16, 16), interpolation=cv2.INTER_NEAREST) > 0
        ref_r = cv2.resize(right, (16, 16), interpolation=cv2.INTER_NEAREST) > 0
        refs.append((ref_l | ref_r) if i != 2 else ref_l)
        assert i == 2 or ((ref_l | ref_r) != ref_l).any() and ((ref_l | ref_r) != ref_r).any()
    table = pd.DataFrame(rows)
    table.attrs = {"dataset": "hand", "mask_columns": ["left", "right"]}
    out = build_cache(table, tmp_path / "c", size=16, shard_size=2, workers=1, progress=False)
    cache = Cache(out, verify=True)
    assert cache.meta["has_masks"] is True
    images, masks = cache.load(cache.rows())
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    for i in range(3):
        np.testing.assert_array_equal(masks[i], refs[i].astype(np.uint8))
        np.testing.assert_array_equal(
            images[i], cv2.resize(read_image(rows[i]["path"]), (16, 16), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(cache.masks(1)[0], masks[2])
    marker = json.loads((out / "shards" / "shard-00000.json").read_text())
    assert marker["masks_sha256"] == hashlib.sha256((out / "shards" / "shard-00000.masks.npy")
                                                    .read_bytes()).hexdigest()


def test_pad_letterboxes_and_dicom_decodes(tmp_path):
    rng = np.random.default_rng(2)
    wide = rng.integers(1, 256, (20, 40), dtype=np.uint8)
    write_image(tmp_path / "wide.png", wide)
    write_dicom(tmp_path / "x.dcm", rng.integers(0, 256, (24, 24), dtype=np.uint8))
    table = pd.DataFrame({"path": [str(tmp_path / "wide.png"), str(tmp_path / "x.dcm")],
                          "split": ["train", "test"], "label": [1, 0],
                          "boxes": [[[2.5, 3, 10, 5, 0], [1, 1, 2, 2, 1]], []]})
    table.attrs = {"classes": ["a", "b"], "box_classes": ["p", "q"]}
    cache = Cache(build_cache(table, tmp_path / "c", size=16, resize="pad", workers=1, progress=False))
    images, _ = cache.load(cache.rows())
    np.testing.assert_array_equal(images[0, :4], 0)  # 40x20 -> 16x8, centred: rows 4..11
    np.testing.assert_array_equal(images[0, 12:], 0)
    np.testing.assert_array_equal(images[0, 4:12], cv2.resize(wide, (16, 8), interpolation=cv2.INTER_CUBIC))
    assert resize_geometry(20, 40, 16, "pad") == (0.4, 0.4, 0.0, 4.0)
    np.testing.assert_array_equal(
        images[1], cv2.resize(read_image(tmp_path / "x.dcm"), (16, 16), interpolation=cv2.INTER_CUBIC))
    assert cache.index["boxes"].tolist() == [[[2.5, 3, 10, 5, 0], [1, 1, 2, 2, 1]], []]
    assert cache.box_classes == ["p", "q"] and cache.meta["table_attrs"]["box_classes"] == ["p", "q"]
    assert cache.targets(cache.rows()).tolist() == [1, 0] and cache.targets(cache.rows()).dtype == np.int64


def test_verify_finds_a_flipped_byte(nih, built, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(built[1], out)
    Cache(out, verify=True)
    victim = out / "shards" / "shard-00002.images.npy"
    data = bytearray(victim.read_bytes())
    data[200] ^= 0x01
    victim.write_bytes(bytes(data))
    problems = Cache(out).verify()
    assert len(problems) == 1 and "shard-00002.images.npy" in problems[0]
    with pytest.raises(DataError, match="shard-00002.images.npy"):
        Cache(out, verify=True)


# ----------------------------------------------------------------------------- hand-computed pixels
#
# OpenCV's INTER_CUBIC (what the cache uses for images) samples destination pixel d at source
# coordinate s = (d + 0.5) * scale - 0.5 with Keys' cubic kernel, a = -0.75, clamping indices at
# the border (replicate). A 2x downscale samples s = 0.5, 2.5, ...: fraction t = 0.5, where the
# four weights are (-3/32, 19/32, 19/32, -3/32), exact in OpenCV's 11-bit fixed point (-192, 1216,
# 1216, -192 / 2048), so the uint8 results below are exact. A 1-D step [a, a, b, b] gives
#   d=0 (s=0.5, taps clamp(-1..2) = a, a, a, b): (35a - 3b) / 32
#   d=1 (s=2.5, taps 1..clamp(4)   = a, b, b, b): (35b - 3a) / 32
# i.e. a = 64, b = 96 -> 61, 99 (bicubic overshoot; INTER_AREA would give 64, 96). An image that is
# a sum of a row profile and a column profile resizes to the sum of the two 1-D results (the
# kernel is separable and its weights sum to 1); a constant image stays constant.
# INTER_NEAREST (masks) takes source index floor(d * scale): rows/columns 0, 2, 4, ... at 2x.

def _cv2_png(path, img):
    assert cv2.imwrite(str(path), img)  # plain OpenCV, not our writer
    return str(path)


def test_squash_cache_pixels_are_hand_computed_bicubic_and_nearest(tmp_path):
    step = np.array([0, 0, 32, 32])
    separable = (64 + step[:, None] + step[None, :]).astype(np.uint8)   # 64 64 96 96 / ... / 96 96 128 128
    wide_step = np.tile(np.array([64, 64, 64, 96, 96, 96, 96, 96], np.uint8), (4, 1))  # 4 x 8
    constant = np.full((5, 7), 173, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 2], mask[1, 1], mask[2, 0], mask[3, 3] = 255, 255, 1, 255
    empty = np.zeros((4, 8), np.uint8)
    table = pd.DataFrame({
        "path": [_cv2_png(tmp_path / f"{k}.png", im) for k, im in
                 (("separable", separable), ("wide", wide_step), ("constant", constant))],
        "split": ["train", "val", "test"],
        "mask": [_cv2_png(tmp_path / "mask.png", mask), _cv2_png(tmp_path / "empty.png", empty),
                 float("nan")]})
    table.attrs = {"dataset": "hand", "mask_columns": ["mask"]}
    cache = Cache(build_cache(table, tmp_path / "c", size=2, shard_size=2, workers=1, progress=False))
    images, masks = cache.load(cache.rows())
    # separable: 64 + {-3, 35} (rows) + {-3, 35} (columns), from (35*0 - 3*32)/32 = -3 and
    # (35*32 - 3*0)/32 = 35
    np.testing.assert_array_equal(images[0], [[58, 96], [96, 134]])
    # 4 x 8 squashed to 2 x 2: x scale 4, s = 1.5 (taps 0..3 = 64, 64, 64, 96 -> 61) and
    # s = 5.5 (taps 4..7 = 96 -> 96); y is constant
    np.testing.assert_array_equal(images[1], [[61, 96], [61, 96]])
    np.testing.assert_array_equal(images[2], [[173, 173], [173, 173]])
    # nearest keeps source (0, 0), (0, 2), (2, 0), (2, 2): mask[0, 2] and mask[2, 0] (value 1:
    # any non-zero is foreground); mask[1, 1] and mask[3, 3] fall between the samples
    np.testing.assert_array_equal(masks[0], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(masks[1], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(masks[2], [[0, 0], [0, 0]])  # no mask file: empty
    assert cache.index[["orig_h", "orig_w"]].values.tolist() == [[4, 4], [4, 8], [5, 7]]


def test_pad_cache_pixels_are_hand_computed(tmp_path):
    # 4 x 8 (h x w) into 4 x 4: longer side 8 -> 4, so 2 x 4, rows 1..2 (top = (4 - 2) // 2).
    # Columns 64 64 96 96 96 96 64 64 at 2x: s = 0.5 (64, 64, 64, 96 -> 61), 2.5 (64, 96, 96, 96
    # -> 99), 4.5 (96, 96, 96, 64 -> 99), 6.5 (96, 64, 64, clamp 64 -> 61).
    wide = np.tile(np.array([64, 64, 96, 96, 96, 96, 64, 64], np.uint8), (4, 1))
    tall = np.full((8, 4), 200, np.uint8)  # 8 x 4 -> 4 x 2, columns 1..2
    mask = np.zeros((4, 8), np.uint8)      # nearest at 2x keeps rows 0, 2 and columns 0, 2, 4, 6
    mask[0, 2], mask[2, 6], mask[1, 1], mask[3, 7] = 255, 255, 255, 255
    table = pd.DataFrame({"path": [_cv2_png(tmp_path / "wide.png", wide),
                                   _cv2_png(tmp_path / "tall.png", tall)],
                          "split": ["train", "test"],
                          "mask": [_cv2_png(tmp_path / "mask.png", mask), float("nan")]})
    table.attrs = {"mask_columns": ["mask"]}
    cache = Cache(build_cache(table, tmp_path / "c", size=4, resize="pad", workers=1, progress=False))
    images, masks = cache.load(cache.rows())
    np.testing.assert_array_equal(images[0], [[0, 0, 0, 0], [61, 99, 99, 61], [61, 99, 99, 61], [0, 0, 0, 0]])
    np.testing.assert_array_equal(images[1], [[0, 200, 200, 0]] * 4)
    np.testing.assert_array_equal(masks[0], [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert resize_geometry(4, 8, 4, "pad") == (0.5, 0.5, 0.0, 1.0)
    assert resize_geometry(8, 4, 4, "pad") == (0.5, 0.5, 1.0, 0.0)
