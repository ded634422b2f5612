"""NIH ChestX-ray14: phantom writer and reader for the official on-disk layout.

Layout (as downloaded)::

    images_001/images/00000001_000.png ... images_012/images/*.png   (1024x1024, 8-bit grey)
    Data_Entry_2017_v2020.csv    header with bracketed names holding commas (11 fields)
    train_val_list.txt, test_list.txt   patient-disjoint, no trailing newline
    BBox_List_2017.csv           984 boxes; the label is spelled "Infiltrate" there
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import (
    finish_table,
    read_csv_checked,
    read_list,
    resolve_path,
    sample_multilabel,
    split_by_fractions,
    split_off_validation,
)

NAME = "nih"
LABELS = phantom.NIH_FINDINGS  # the dataset's own spellings, e.g. "Pleural_Thickening"
ENTRY_FILE = "Data_Entry_2017_v2020.csv"
ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_FILE = "BBox_List_2017.csv"
BBOX_LABELS = {"Infiltrate": "Infiltration"}  # BBox spelling -> Data_Entry spelling
BOXED = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax")

# Image counts per finding in the real Data_Entry_2017 (112,120 images): the long tail.
REAL_COUNTS = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
               "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302,
               "Consolidation": 4667, "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686,
               "Pleural_Thickening": 3385, "Hernia": 227}
# Phantom prevalence: NIH's order and shape, floored at 4% so that small sets have positives.
PHANTOM_PREVALENCE = {k: max(0.04, v / 112120) for k, v in REAL_COUNTS.items()}


# ----------------------------------------------------------------------------- phantom writer

def _render_one(job):
    root, rel, seed, size, findings = job
    ph = phantom.render_chest(seed, size, findings)
    write_image(Path(root) / rel, ph.image)
    return [(f, x, y, w, h) for (f, x, y, w, h) in ph.boxes if f in BOXED]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom NIH ChestX-ray14 in the official layout under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, jobs, pid = [], [], 0
    while len(rows) < n:
        pid += 1
        for follow_up in range(min(int(rng.geometric(0.3)), n - len(rows))):
            findings = sample_multilabel(rng, PHANTOM_PREVALENCE)
            name = f"{pid:08d}_{follow_up:03d}.png"
            rows.append(dict(name=name, findings=findings, follow_up=follow_up, pid=pid,
                             age=int(rng.integers(1, 95)), sex=str(rng.choice(["M", "F"])),
                             view=str(rng.choice(["PA", "AP"], p=[0.6, 0.4]))))
    per_folder = max(1, math.ceil(n / 12))
    for i, r in enumerate(rows):
        r["rel"] = f"images_{i // per_folder + 1:03d}/images/{r['name']}"
        jobs.append((str(out), r["rel"], int(rng.integers(2**31)), size, tuple(r["findings"])))
    boxes = parallel_map(_render_one, jobs, workers, desc="nih phantom", progress=progress)

    lines = [ENTRY_HEADER]
    for r in rows:
        ow, oh = int(rng.integers(2000, 3000)), int(rng.integers(2000, 3000))
        spacing = round(0.143 * 1024 / size, 3)
        labels = "|".join(r["findings"]) or "No Finding"
        lines.append(f"{r['name']},{labels},{r['follow_up']},{r['pid']},{r['age']},{r['sex']},"
                     f"{r['view']},{ow},{oh},{spacing},{spacing}")
    write_text(out / ENTRY_FILE, "\n".join(lines) + "\n")

    # Official split: whole patients go to test until about 22.8% of the images (25,596/112,120).
    patients = rng.permutation(sorted({r["pid"] for r in rows}))
    test_pids, n_test = set(), 0
    per_patient = pd.Series([r["pid"] for r in rows]).value_counts()
    for p in patients:
        if n_test >= round(0.228 * n):
            break
        test_pids.add(int(p))
        n_test += int(per_patient[p])
    test = [r["name"] for r in rows if r["pid"] in test_pids]
    trainval = [r["name"] for r in rows if r["pid"] not in test_pids]
    write_text(out / "test_list.txt", "\n".join(test))          # no trailing newline, as NIH
    write_text(out / "train_val_list.txt", "\n".join(trainval))

    bbox_lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    for r, bxs in zip(rows, boxes):
        for f, x, y, w, h in bxs[:1]:  # NIH has at most a handful of boxes per image; keep one
            label = {v: k for k, v in BBOX_LABELS.items()}.get(f, f)
            bbox_lines.append(f"{r['name']},{label},{x:.6f},{y:.6f},{w:.6f},{h:.6f},,")
    write_text(out / BBOX_FILE, "\n".join(bbox_lines) + "\n")
    return out


# ----------------------------------------------------------------------------- reader

def _image_paths(root: Path) -> dict:
    found = {p.name: p for p in sorted(root.glob("images_*/images/*.png"))}
    if not found:
        found = {p.name: p for p in sorted(root.glob("images/*.png"))}  # some mirrors flatten it
    return found


def _entry_path(root: Path) -> Path:
    path = root / ENTRY_FILE
    if not path.exists() and (root / "Data_Entry_2017.csv").exists():
        path = root / "Data_Entry_2017.csv"  # the 2017 file: same columns plus a trailing comma
    return path


def read_entries(root) -> pd.DataFrame:
    """Parse Data_Entry_2017(_v2020).csv into one row per image with the 14 label columns."""
    path = _entry_path(Path(root))
    # index_col=False: rows with one more (trailing, empty) field than the header must not turn
    # the first column into the index and shift every value one column to the left.
    df = read_csv_checked(path, ["Image Index", "Finding Labels", "Patient ID"], index_col=False)
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed")]]
    mat = np.zeros((len(df), len(LABELS)), np.float32)
    col = {k: i for i, k in enumerate(LABELS)}
    for row, text in enumerate(df["Finding Labels"].fillna("").astype(str)):
        for label in text.split("|"):
            label = label.strip()
            if label == "No Finding":
                continue
            if label not in col:
                raise DataError(f"{path}: row {row + 2} (image {df['Image Index'].iloc[row]}): "
                                f"unknown label {label!r} in column 'Finding Labels'; "
                                f"known: {list(LABELS)} and 'No Finding'")
            mat[row, col[label]] = 1.0
    out = pd.DataFrame(mat, columns=list(LABELS))
    out.insert(0, "image", df["Image Index"].astype(str).to_numpy())
    pid = pd.to_numeric(df["Patient ID"], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(pid) & (pid == np.round(pid)) & (np.abs(pid) < 2**53))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i + 2} (image {df['Image Index'].iloc[i]}): column 'Patient ID' "
                        f"must be a whole number, got {df['Patient ID'].iloc[i]!r}")
    out.insert(1, "patient_id", pid.astype(np.int64))
    for src, dst in (("Follow-up #", "follow_up"), ("Patient Age", "age"),
                     ("Patient Gender", "sex"), ("View Position", "view")):
        if src in df.columns:
            out[dst] = df[src].to_numpy()
    return out


def load_table(root, split: str = "official", val_fraction: float = 0.1, val_by: str = "image",
               seed: int = 0, fractions=(0.7, 0.1, 0.2), missing: str = "error") -> pd.DataFrame:
    """Read NIH ChestX-ray14 under ``root``.

    ``split="official"``: test = test_list.txt, and a seeded ``val_fraction`` of train_val_list.txt
    becomes validation, drawn by image (fzlpr's protocol, the default) or by patient
    (``val_by="patient"``, no leakage). ``split="random"``: a patient-disjoint random split with
    ``fractions`` (70/10/20 is what mlrfnet's reported counts imply). ``missing="drop"`` drops
    rows whose PNG is absent instead of raising.
    """
    root = Path(root)
    if missing not in ("error", "drop"):
        raise DataError(f"nih: missing must be 'error' or 'drop', got {missing!r}")
    df = read_entries(root)
    paths = _image_paths(root)
    df["path"] = [str(resolve_path(paths[n])) if n in paths else "" for n in df["image"]]
    absent = df["path"] == ""
    if absent.any():
        if missing == "error":
            names = df.loc[absent, "image"].head(5).tolist()
            raise DataError(f"{root}: {int(absent.sum())} image(s) listed in {_entry_path(root).name} "
                            f"are missing under images_*/images/, e.g. {names}")
        df = df.loc[~absent]
    if split == "official":
        test = set(read_list(root / "test_list.txt"))
        trainval = set(read_list(root / "train_val_list.txt"))
        df["split"] = ["test" if n in test else ("train" if n in trainval else "") for n in df["image"]]
        df = df.loc[df["split"] != ""]
        df = split_off_validation(df, val_fraction, seed, by=val_by)
    elif split == "random":
        df = split_by_fractions(df, fractions, seed, by="patient")
    else:
        raise DataError(f"nih: split must be 'official' or 'random', got {split!r}")
    return finish_table(df, dataset=NAME, root=root, labels=LABELS)


def load_boxes(root) -> pd.DataFrame:
    """Read BBox_List_2017.csv: columns image, label (as in the file), finding (Data_Entry
    spelling), x, y, w, h in pixels of the 1024x1024 PNG."""
    path = Path(root) / BBOX_FILE
    # The header "Image Index,Finding Label,Bbox [x,y,w,h],,," has 9 fields for 6 values: skip it
    # after checking its first two names, and read the rows by position.
    header = read_csv_checked(path, nrows=0, index_col=False)
    for i, name in enumerate(("Image Index", "Finding Label")):
        found = str(header.columns[i]).strip() if len(header.columns) > i else None
        if found != name:
            raise DataError(f"{path}: column {i + 1} of the header must be {name!r}, found {found!r}")
    df = read_csv_checked(path, header=None, skiprows=1, usecols=range(6), dtype=str,
                          keep_default_na=False)
    df.columns = ["image", "label", "x", "y", "w", "h"]
    df["image"] = df["image"].str.strip()
    for col in ("x", "y", "w", "h"):
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        if values.isna().any():
            i = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{path}: line {i + 2} (image {df['image'].iloc[i]}): box {col} "
                            f"{df[col].iloc[i]!r} is not a number")
        df[col] = values.astype(np.float64)
    df["label"] = df["label"].str.strip()
    df["finding"] = df["label"].map(lambda s: BBOX_LABELS.get(s, s))
    bad = ~df["finding"].isin(LABELS).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {i + 2} (image {df['image'].iloc[i]}): unknown label "
                        f"{df['label'].iloc[i]!r} in column 'Finding Label' ({int(bad.sum())} such "
                        f"row(s), labels {sorted(set(df.loc[bad, 'label']))}); known: {list(LABELS)} "
                        f"and the BBox spelling(s) {list(BBOX_LABELS)}")
    return df
