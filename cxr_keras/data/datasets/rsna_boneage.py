"""RSNA Pediatric Bone Age Challenge (2017): phantom writer and reader for the layout as
downloaded (the RSNA download and the Kaggle copy).

Layout (``root`` is the folder holding the CSVs)::

    boneage-training-dataset.csv        id,boneage,male          12,611 rows; male True / False
    boneage-training-dataset/<id>.png   (Kaggle: boneage-training-dataset/boneage-training-dataset/)
    Validation Dataset.csv              Image ID,male,Bone Age (months)   1,425 rows (RSNA only)
    boneage-validation-dataset-1/<Image ID>.png, boneage-validation-dataset-2/...   (RSNA only)
    boneage-test-dataset.csv            Case ID,Sex              200 rows; Sex M / F, no bone age
    boneage-test-dataset/<Case ID>.png  (Kaggle: nested twice, as the training folder)

The three CSVs name the same things differently (``id`` / ``Image ID`` / ``Case ID``; ``male``
True/False against ``Sex`` M/F; ``boneage`` against ``Bone Age (months)``); the reader maps them
onto one table. The validation CSV and folders (RSNA download only) may sit one folder down
(``Bone Age Validation Set/``); its CSV is found by name (``Validation Dataset.csv``, or one
``*validation*.csv``), its images in every ``boneage-validation-dataset*`` folder. Booleans are
read in any case (``True``, ``TRUE``, ``true``, ``1``); a bad value raises a DataError naming the
file, line and column.

mtpret uses the hand radiographs as unlabelled pretraining images only (its Table I: 10,811 of
them; how they were chosen is not stated; we take the 12,611 training images: ``split`` train).

Phantom: left-hand radiographs (:func:`cxr_keras.data.phantom.render_hand`) whose skeletal
maturity follows the bone age (hand size, ossified carpals, open or fused growth plates), in the
Kaggle layout with the training folder nested twice, plus a validation set in the RSNA layout
and a test set (each about 10% of the images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import check_files_exist, finish_table, read_csv_checked, resolve_path

NAME = "rsna_boneage"
TRAIN_CSV = "boneage-training-dataset.csv"
TEST_CSV = "boneage-test-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"
TEST_DIR = "boneage-test-dataset"
VAL_CSV = "Validation Dataset.csv"
VAL_DIR_PREFIX = "boneage-validation-dataset"
COLUMNS = {  # split -> (csv id column, bone age column or None, sex column, sex kind)
    "train": ("id", "boneage", "male", "bool"),
    "val": ("Image ID", "Bone Age (months)", "male", "bool"),
    "test": ("Case ID", None, "Sex", "MF"),
}
REAL_COUNTS = {"train": 12611, "val": 1425, "test": 200}
_BOOL = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


# ----------------------------------------------------------------------------- CSV parsing

def _read(path, split) -> pd.DataFrame:
    """The CSV as text (header names stripped, BOM removed) with its columns checked."""
    df = read_csv_checked(path, (), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    id_col, age_col, sex_col, _ = COLUMNS[split]
    missing = [c for c in (id_col, age_col, sex_col) if c is not None and c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {list(df.columns)}")
    return df


def _bad(path, i, col, value, want):
    return DataError(f"{path}: line {i + 2}, column {col!r}: {value!r} is not {want}")


def parse_csv(path, split: str) -> pd.DataFrame:
    """Rows of one of the three CSVs as ``image_id`` (int), ``boneage`` (months, NaN for the
    test CSV) and ``male`` (1.0 / 0.0); errors name the file, line and column."""
    df = _read(path, split)
    id_col, age_col, sex_col, kind = COLUMNS[split]
    ids, ages, males = [], [], []
    for i, row in enumerate(df.itertuples(index=False)):
        rec = dict(zip(df.columns, row))
        text = rec[id_col].strip()
        if not text.isdigit():
            raise _bad(path, i, id_col, rec[id_col], "an integer image id")
        ids.append(int(text))
        if age_col is None:
            ages.append(np.nan)
        else:
            try:
                age = float(rec[age_col])
            except ValueError:
                age = np.nan
            if not 0 < age <= 240:
                raise _bad(path, i, age_col, rec[age_col], "a bone age in months (0-240]")
            ages.append(age)
        sex = rec[sex_col].strip()
        value = (_BOOL.get(sex.lower()) if kind == "bool" else
                 {"M": 1.0, "F": 0.0}.get(sex.upper()))
        if value is None:
            raise _bad(path, i, sex_col, rec[sex_col],
                       "True / False" if kind == "bool" else "M / F")
        males.append(value)
    out = pd.DataFrame({"image_id": ids, "boneage": ages, "male": males})
    dup = out["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{path}: image id(s) listed twice: {sorted(set(out.loc[dup, 'image_id']))[:5]}")
    return out


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The images :func:`write_phantom` writes: dicts with ``split``, ``image_id``, ``boneage``
    (months, 1-228 as the real range), ``male`` and renderer ``seed``. Deterministic."""
    rng = np.random.default_rng(seed)
    n_val = n_test = int(round(0.1 * n)) if n >= 10 else 0
    ids = rng.choice(np.arange(1377, 1377 + max(20000, 3 * n)), size=n, replace=False)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    plan = []
    for split, image_id in zip(splits, ids):
        age = float(np.clip(rng.normal(127, 41), 1, 228))
        if split == "val":
            age = round(age, 2)  # the validation CSV's ages have decimals
        else:
            age = float(int(round(age)))
        plan.append(dict(split=split, image_id=int(image_id), boneage=age,
                         male=bool(rng.random() < 0.54), seed=int(rng.integers(2**31))))
    return plan


def _render_one(job):
    path, item, size = job
    img = phantom.render_hand(item["seed"], size, item["boneage"], item["male"])
    write_image(path, img)
    return path


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom under ``out`` (returns ``out``): the training set nested
    twice (Kaggle), the validation set in the RSNA layout (two folders and its CSV, male as
    TRUE/FALSE), the test set with its M/F CSV; 80 / 10 / 10."""
    out = Path(out)
    plan = phantom_plan(n, size, seed)
    jobs, lines = [], {"train": ["id,boneage,male"], "val": ["Image ID,male,Bone Age (months)"],
                       "test": ["Case ID,Sex"]}
    n_val = 0
    for item in plan:
        i, split = item["image_id"], item["split"]
        if split == "train":
            path = out / TRAIN_DIR / TRAIN_DIR / f"{i}.png"
            lines["train"].append(f"{i},{item['boneage']:g},{item['male']}")
        elif split == "val":
            n_val += 1
            path = out / f"{VAL_DIR_PREFIX}-{1 + n_val % 2}" / f"{i}.png"
            lines["val"].append(f"{i},{str(item['male']).upper()},{item['boneage']:g}")
        else:
            path = out / TEST_DIR / TEST_DIR / f"{i}.png"
            lines["test"].append(f"{i},{'M' if item['male'] else 'F'}")
        jobs.append((str(path), item, size))
    parallel_map(_render_one, jobs, workers, desc="rsna_boneage phantom", progress=progress)
    write_text(out / TRAIN_CSV, "\n".join(lines["train"]) + "\n")
    if len(lines["val"]) > 1:
        write_text(out / VAL_CSV, "\n".join(lines["val"]) + "\n")
    if len(lines["test"]) > 1:
        write_text(out / TEST_CSV, "\n".join(lines["test"]) + "\n")
    return out


# ----------------------------------------------------------------------------- reader

def _image_dir(root: Path, name: str) -> Path:
    """``root/name/name`` (Kaggle) if it holds PNGs, else ``root/name``."""
    nested = root / name / name
    return nested if nested.is_dir() else root / name


def _find_validation(root: Path):
    """(CSV path, {image id: png path}) of the validation set, or (None, {})."""
    candidates = [p for pattern in ("*.csv", "*/*.csv") for p in sorted(root.glob(pattern))
                  if "validation" in p.name.lower()]
    named = [p for p in candidates if p.name.lower() == VAL_CSV.lower()]
    if len(named) > 1 or (not named and len(candidates) > 1):
        raise DataError(f"rsna_boneage: more than one validation CSV under {root}: "
                        f"{[str(p) for p in (named or candidates)]}")
    csv = (named or candidates or [None])[0]
    images = {}
    for d in sorted(root.glob(f"{VAL_DIR_PREFIX}*")) + sorted(root.glob(f"*/{VAL_DIR_PREFIX}*")):
        for p in d.rglob("*.png"):
            if p.stem.isdigit():
                images.setdefault(int(p.stem), p)
    return csv, images


def load_table(root, missing: str = "error") -> pd.DataFrame:
    """Read the RSNA Bone Age set under ``root``: the training CSV (required), the validation and
    test CSVs where present.

    Columns: ``path``, ``split`` (train / val / test: the challenge's own), ``image_id`` (the
    CSV's id; one image per child, but the test numbering overlaps the training one, so there
    is no patient_id column), ``boneage`` (months; NaN for test, whose CSV has none),
    ``male`` (1.0 / 0.0); ``df.attrs["targets"] == ["boneage"]``. ``missing="drop"`` drops rows
    whose image file is absent instead of raising a DataError naming them.
    """
    if missing not in ("error", "drop"):
        raise DataError(f"rsna_boneage: missing must be 'error' or 'drop', got {missing!r}")
    root = Path(root)
    if not (root / TRAIN_CSV).is_file():
        raise DataError(f"rsna_boneage: missing {root / TRAIN_CSV} (root is the folder holding "
                        "the challenge's CSVs)")
    frames = []
    train = parse_csv(root / TRAIN_CSV, "train")
    train["path"] = [str(resolve_path(_image_dir(root, TRAIN_DIR) / f"{i}.png")) for i in train["image_id"]]
    train["split"] = "train"
    frames.append(train)
    val_csv, val_images = _find_validation(root)
    if val_csv is not None:
        val = parse_csv(val_csv, "val")
        where = val_csv.parent
        val["path"] = [str(resolve_path(val_images[i])) if i in val_images else
                       str(resolve_path(where / f"{VAL_DIR_PREFIX}-1" / f"{i}.png"))
                       for i in val["image_id"]]
        val["split"] = "val"
        frames.append(val)
    if (root / TEST_CSV).is_file():
        test = parse_csv(root / TEST_CSV, "test")
        test["path"] = [str(resolve_path(_image_dir(root, TEST_DIR) / f"{i}.png")) for i in test["image_id"]]
        test["split"] = "test"
        frames.append(test)
    df = pd.concat(frames, ignore_index=True)
    df = check_files_exist(df, missing, root, "hand radiograph(s) listed in the CSVs")
    df = finish_table(df, dataset=NAME, root=root)
    df.attrs["targets"] = ["boneage"]
    return df
