"""MURA v1.1 (musculoskeletal radiographs): phantom writer and reader for the official layout.

Layout (``root`` is the folder holding ``MURA-v1.1``; every path in the CSVs is relative to it)::

    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png    36,808 images
    MURA-v1.1/valid/XR_WRIST/patient11185/study1_negative/image1.png     3,197 images
    MURA-v1.1/train_image_paths.csv   headerless, one image path per line
    MURA-v1.1/train_labeled_studies.csv  headerless ``<study dir>/,<0|1>`` (trailing slash)
    MURA-v1.1/valid_image_paths.csv, MURA-v1.1/valid_labeled_studies.csv

Seven body parts; 14,656 studies (13,457 train, 1,199 valid); the label (1 abnormal) is in the
study CSV and also in the study folder's suffix (``_positive`` / ``_negative``). Images are
grey PNGs of varying size, a few stored as RGB of grey content.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import (
    check_files_exist,
    find_dataset_dir,
    finish_table,
    path_under,
    read_csv_checked,
    resolve_path,
    split_by_fractions,
    split_off_validation,
)

NAME = "mura"
CLASSES = ("normal", "abnormal")
DIR = "MURA-v1.1"
BODY_PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER",
              "XR_WRIST")
# Real image counts per body part (MURA v1.1).
TRAIN_IMAGES = {"XR_ELBOW": 4931, "XR_FINGER": 5106, "XR_FOREARM": 1825, "XR_HAND": 5543,
                "XR_HUMERUS": 1272, "XR_SHOULDER": 8379, "XR_WRIST": 9752}
VALID_IMAGES = {"XR_ELBOW": 465, "XR_FINGER": 461, "XR_FOREARM": 301, "XR_HAND": 460,
                "XR_HUMERUS": 288, "XR_SHOULDER": 563, "XR_WRIST": 659}
ABNORMAL_STUDY_FRACTION = (5177 + 538) / (13457 + 1199)
SUFFIX_LABEL = {"positive": 1, "negative": 0}
STUDY_RE = re.compile(r"^study\d+_(positive|negative)$", re.IGNORECASE)
# Real totals per official split: images, studies (normal / abnormal), patients.
REAL_TOTALS = {"train": {"images": 36808, "studies": 13457, "normal_studies": 8280,
                         "abnormal_studies": 5177, "patients": 11184},
               "valid": {"images": 3197, "studies": 1199, "normal_studies": 661,
                         "abnormal_studies": 538, "patients": 783}}


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The ``n`` images :func:`write_phantom` writes: dicts with ``rel`` (path relative to the
    folder above MURA-v1.1), ``split`` (train/valid), ``body_part``, ``patient_id``, ``study``
    (study dir, trailing slash), ``label``, renderer ``seed`` and ``rgb``. Deterministic."""
    rng = np.random.default_rng(seed)
    parts, weights = list(TRAIN_IMAGES), np.array(list(TRAIN_IMAGES.values()), float)
    patients, total = [], 0
    while total < n:
        part = str(rng.choice(parts, p=weights / weights.sum()))
        studies = []
        for _ in range(1 + int(rng.random() < 0.2)):
            k = min(int(rng.integers(1, 5)), n - total)
            if k <= 0:
                break
            studies.append((int(rng.random() < ABNORMAL_STUDY_FRACTION), k))
            total += k
        patients.append((part, studies))
    all_studies = [s for _, st in patients for s in st]
    if len(all_studies) >= 2 and len({lab for lab, _ in all_studies}) == 1:
        part, st = patients[0]  # both classes present in small sets
        patients[0] = (part, [(1 - st[0][0], st[0][1])] + st[1:])
    # Official split: whole patients to valid until ~8% of the images (3,197 / 40,005).
    target = max(1, round(n * sum(VALID_IMAGES.values()) / (36808 + 3197)))
    valid, n_valid = set(), 0
    for i in rng.permutation(len(patients)):
        if n_valid >= target or len(valid) >= len(patients) - 1:
            break
        valid.add(int(i))
        n_valid += sum(k for _, k in patients[i][1])
    order = [i for i in range(len(patients)) if i not in valid] + sorted(valid)
    plan, index = [], 0
    for number, i in enumerate(order, start=1):
        part, studies = patients[i]
        split = "valid" if i in valid else "train"
        for s, (label, k) in enumerate(studies, start=1):
            study = (f"{DIR}/{split}/{part}/patient{number:05d}/"
                     f"study{s}_{'positive' if label else 'negative'}/")
            for j in range(1, k + 1):
                plan.append(dict(rel=f"{study}image{j}.png", split=split, body_part=part,
                                 patient_id=number, study=study, label=label,
                                 seed=int(rng.integers(2**31)), rgb=index % 7 == 3))
                index += 1
    return plan


def _render_one(job):
    out, item, size = job
    img = phantom.render_bone(item["seed"], size, abnormal=bool(item["label"]))
    write_image(Path(out) / item["rel"], img, rgb=item["rgb"])
    return item["rel"]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom MURA under ``out/MURA-v1.1`` (returns ``out``): 1-4 images per
    study, body parts in the real proportions, abnormal studies rendered with ``abnormal=True``."""
    out = Path(out)
    plan = phantom_plan(n, size, seed)
    parallel_map(_render_one, [(str(out), item, size) for item in plan], workers,
                 desc="mura phantom", progress=progress)
    for split in ("train", "valid"):
        items = [it for it in plan if it["split"] == split]
        write_text(out / DIR / f"{split}_image_paths.csv", "".join(f"{it['rel']}\n" for it in items))
        studies = dict.fromkeys((it["study"], it["label"]) for it in items)
        write_text(out / DIR / f"{split}_labeled_studies.csv",
                   "".join(f"{s},{lab}\n" for s, lab in studies))
    return out


# ----------------------------------------------------------------------------- reader

def _read_paths(path: Path) -> list[str]:
    df = read_csv_checked(path, header=None, dtype=str, skip_blank_lines=True, keep_default_na=False)
    if df.shape[1] != 1:
        raise DataError(f"{path}: expected one column (an image path per line), found {df.shape[1]}")
    return [s.strip() for s in df[0].astype(str)]


def _read_studies(path: Path) -> dict:
    df = read_csv_checked(path, header=None, dtype=str, skip_blank_lines=True, keep_default_na=False)
    if df.shape[1] != 2:
        raise DataError(f"{path}: expected two columns (study dir, 0/1), found {df.shape[1]}")
    out = {}
    for row, (study, label) in enumerate(zip(df[0], df[1]), start=1):
        label = str(label).strip()
        if label not in ("0", "1"):
            raise DataError(f"{path}: line {row} (study {study}): label must be 0 or 1, got {label!r}")
        out[_study_key(study)] = int(label)
    return out


def _study_key(study: str) -> str:
    return str(study).strip().rstrip("/") + "/"


def read_split(mura: Path, split: str) -> pd.DataFrame:
    """One row per image of the official ``split`` ("train" or "valid") of the MURA-v1.1 folder
    ``mura``, with its study label checked against the study folder's ``_positive`` /
    ``_negative`` suffix. CSV paths start with ``MURA-v1.1/``; they are resolved inside ``mura``
    (so a renamed top folder still works)."""
    paths_csv = mura / f"{split}_image_paths.csv"
    studies_csv = mura / f"{split}_labeled_studies.csv"
    labels = _read_studies(studies_csv)
    rows = []
    for line, rel in enumerate(_read_paths(paths_csv), start=1):
        parts = rel.split("/")
        if len(parts) != 6 or parts[0] != DIR or not parts[3].startswith("patient"):
            raise DataError(f"{paths_csv}: line {line}: expected {DIR}/<split>/XR_<PART>/patientNNNNN/"
                            f"studyN_<positive|negative>/imageN.png, got {rel!r}")
        study = "/".join(parts[:5]) + "/"
        if study not in labels:
            raise DataError(f"{paths_csv}: line {line}: study {study} of image {rel} is not in "
                            f"{studies_csv}")
        m = STUDY_RE.match(parts[4])
        if m and SUFFIX_LABEL[m.group(1).lower()] != labels[study]:
            raise DataError(f"{studies_csv}: study {study} has label {labels[study]} but its folder "
                            f"name says {m.group(1)} ({SUFFIX_LABEL[m.group(1).lower()]})")
        try:
            pid = int(parts[3][len("patient"):])
        except ValueError:
            raise DataError(f"{paths_csv}: line {line}: bad patient folder {parts[3]!r}") from None
        full = resolve_path(path_under(mura, "/".join(parts[1:]), f"{paths_csv}: line {line}"))
        rows.append(dict(path=str(full), patient_id=pid, label=labels[study],
                         body_part=parts[2], study=study, image=rel, official_split=split))
    if not rows:
        raise DataError(f"{paths_csv}: no image paths")
    return pd.DataFrame(rows)


def load_table(root, split: str = "official", val_fraction: float = 0.1, val_by: str = "patient",
               seed: int = 0, fractions=(0.8, 0.1, 0.1), split_by: str = "patient",
               level: str = "image", missing: str = "error") -> pd.DataFrame:
    """Read MURA v1.1 under ``root`` (the folder holding MURA-v1.1, or MURA-v1.1 itself).

    Columns: ``path``, ``split``, ``patient_id`` (the number of ``patientNNNNN``), ``label`` (0
    normal, 1 abnormal, from the labeled-studies CSV; a disagreement with the folder suffix is
    a DataError naming the study), ``body_part`` (``XR_WRIST``...), ``study`` (study dir with
    trailing slash, as in the CSV), ``image`` (path as in the CSV), ``official_split``.

    ``split="official"`` (default): the official ``valid`` set becomes ``test`` (MURA's test set
    is not public) and a seeded ``val_fraction`` of train becomes ``val``, drawn by patient
    (``val_by="patient"``, no leakage) or by image/study (``val_by="image"``).
    ``split="random"``: seeded ``fractions`` over all 40,005 images (mtpret's 32,013/3,997/3,995
    is 80/10/10), by patient (``split_by="patient"``) or by row (``split_by="image"``).

    ``level="image"`` (default): one row per image. ``level="study"``: one row per study, with
    ``path`` = its first image, ``paths`` = the list of all its images and ``n_images``; splits
    are then drawn over studies. ``missing="drop"`` drops rows whose PNG is absent instead of
    raising.
    """
    if level not in ("image", "study"):
        raise DataError(f"mura: level must be 'image' or 'study', got {level!r}")
    if missing not in ("error", "drop"):
        raise DataError(f"mura: missing must be 'error' or 'drop', got {missing!r}")
    mura = find_dataset_dir(root, DIR, marker="train_image_paths.csv").resolve()
    df = pd.concat([read_split(mura, "train"), read_split(mura, "valid")], ignore_index=True)
    df = check_files_exist(df, missing, mura, "image(s) listed in the *_image_paths.csv files")
    if level == "study":
        df = (df.groupby("study", sort=False)
                .agg(path=("path", "first"), paths=("path", list), n_images=("path", "size"),
                     patient_id=("patient_id", "first"), label=("label", "first"),
                     body_part=("body_part", "first"), official_split=("official_split", "first"))
                .reset_index())
    if split == "official":
        df["split"] = np.where(df["official_split"] == "valid", "test", "train")
        df = split_off_validation(df, val_fraction, seed, by=val_by)
    elif split == "random":
        if split_by not in ("patient", "image"):
            raise DataError(f"mura: split_by must be 'patient' or 'image', got {split_by!r}")
        df = split_by_fractions(df, fractions, seed, by=split_by)
    else:
        raise DataError(f"mura: split must be 'official' or 'random', got {split!r}")
    return finish_table(df, dataset=NAME, root=mura.parent, classes=CLASSES)

