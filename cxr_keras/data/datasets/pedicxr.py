"""PediCXR (VinDr-PCXR, PhysioNet v1.0.0): phantom writer and reader for the official layout.

Layout (as downloaded from PhysioNet)::

    train/<image_id>.dicom          7,728 DICOMs (some MONOCHROME1)
    test/<image_id>.dicom           1,397 DICOMs
    image_labels_train.csv          image_id, rad_ID, then the 15 label columns below
    image_labels_test.csv           same columns
    annotations_train.csv, annotations_test.csv   boxes of local findings (not read here)

Label columns, in the files' order and with the dataset's own spellings (misspellings
``Brocho-pneumonia`` and ``Diagphramatic hernia`` included): :data:`COLUMNS`. Source: no official
document was reachable from here; the list and order agree across several independent public
loaders of the release (e.g. a RadHarmony-style harmoniser and dataset-preparation scripts that
read ``image_labels_train.csv`` directly), and the per-column counts those projects print
(:data:`REAL_COUNTS`) reproduce the dual-MAE paper's Table 1 exactly once the nine rare diseases
are summed into Other disease (485 train / 85 test). Values are 0/1 (written ``0.0``/``1.0``).

The dataset has no patient identifier (the DICOM headers were stripped); the table therefore has
no ``patient_id`` column and validation is drawn by image.

Reader choices (CHOICE, documented in the fidelity notes):

- ``aggregate="six"`` (default, dual-MAE): the labels are :data:`SIX` -- No finding, Bronchitis,
  Brocho-pneumonia, Bronchiolitis, Pneumonia, Other disease -- named with the dataset's spelling
  ("Brocho-pneumonia", "Other disease"). Every other disease column with fewer than
  ``min_test_positives`` (5) positive images in the TEST file is OR-ed into "Other disease" and
  dropped; the list is in ``df.attrs["folded"]``. On the real data that folds exactly the nine
  rare diseases. A non-six disease that reaches the threshold (not the case for the real data) is
  kept as its own column, with a warning, rather than silently folded. The six named classes are
  always kept (each has 84+ test positives in the real data). ``aggregate=None`` returns all 15
  columns as in the files.
- Several rows per image (one per radiologist ``rad_ID``; the public release appears to have one
  row per image, the reader does not rely on it): disease columns are aggregated by max (positive
  if any reader said so); "No finding" by min (1 only if every reader found nothing), so that it
  never co-occurs with a positive. ``rad_ID`` becomes the readers joined with ``;``.
- ``val_fraction=0.2``: seeded 80/20 train/validation split of the train file, by image (paper).
- ``label_fraction``: keep a seeded, stratification-free fraction of the TRAIN rows (at least one
  image) for the 1/10/50/100% experiments; validation and test are untouched. The fractions are
  nested for a given seed (the 1% images are among the 10% ones, and so on).

Phantom: pediatric chests (``child=True``); disease -> phantom findings in :data:`FINDING_MAP`
(Pneumonia -> Bacterial, i.e. lobar; Situs inversus -> a mirrored chest; Other disease -> one of a
few adult findings). About 30% of the DICOMs are MONOCHROME1 (half of them also with Presentation LUT
Shape INVERSE, the DX form), and a fixed share by position exercises the rest of the display
pipeline (:func:`dicom_variant`): a VOI LUT Sequence, a SIGMOID window, a Modality LUT Sequence,
two frames, and a lossless JPEG-LS (or JPEG 2000) file when its plugin is installed; every
variant decodes to the same picture. About 10% of train images get a
second row from another radiologist who adds a disease (to exercise the aggregation). Rare
diseases are capped at ``min_test_positives - 1`` positives in the phantom test file, as in the
real data, so the folding rule yields the six classes at any ``n``.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import can_compress_dicom, write_dicom
from ..tables import (
    check_files_exist,
    finish_table,
    parse_label_columns,
    read_csv_checked,
    resolve_path,
    split_off_validation,
)

NAME = "pedicxr"
ID_COLUMNS = ("image_id", "rad_ID")
COLUMNS = ("No finding", "Bronchitis", "Brocho-pneumonia", "Other disease", "Bronchiolitis",
           "Situs inversus", "Pneumonia", "Pleuro-pneumonia", "Diagphramatic hernia", "Tuberculosis",
           "Congenital emphysema", "CPAM", "Hyaline membrane disease", "Mediastinal tumor",
           "Lung tumor")
NO_FINDING, OTHER = "No finding", "Other disease"
SIX = ("No finding", "Bronchitis", "Brocho-pneumonia", "Bronchiolitis", "Pneumonia", "Other disease")
RARE = tuple(c for c in COLUMNS if c not in SIX)
LABEL_FILES = {"train": "image_labels_train.csv", "test": "image_labels_test.csv"}

# Positive images per column (train, test) in the public release, as printed by third-party
# loaders; consistent with the dual-MAE paper's Table 1 (see the module docstring).
REAL_COUNTS = {"No finding": (5143, 907), "Bronchitis": (842, 174), "Brocho-pneumonia": (545, 84),
               "Bronchiolitis": (497, 90), "Other disease": (412, 77), "Pneumonia": (392, 89),
               "Hyaline membrane disease": (19, 3), "Tuberculosis": (14, 1), "Situs inversus": (11, 2),
               "Mediastinal tumor": (8, 1), "Pleuro-pneumonia": (6, 0), "CPAM": (5, 1),
               "Lung tumor": (5, 0), "Diagphramatic hernia": (3, 0), "Congenital emphysema": (2, 0)}

# Disease -> phantom findings ("Other disease" draws one of its tuple at random).
FINDING_MAP = {
    "Bronchitis": ("Bronchitis",), "Brocho-pneumonia": ("Bronchopneumonia",),
    "Bronchiolitis": ("Bronchiolitis",), "Pneumonia": ("Bacterial",),
    "Other disease": (("Atelectasis",), ("Cardiomegaly",), ("Effusion",), ("Pneumothorax",)),
    "Situs inversus": (), "Pleuro-pneumonia": ("Bacterial", "Effusion"),
    "Diagphramatic hernia": ("Hernia",), "Tuberculosis": ("TB_Active",),
    "Congenital emphysema": ("Emphysema",), "CPAM": ("Mass",),
    "Hyaline membrane disease": ("Infiltration",), "Mediastinal tumor": ("Enlarged_Cardiomediastinum",),
    "Lung tumor": ("Mass",),
}
# Phantom prevalence: the real train shape, floored (8% for the five named diseases, 1.5% for the
# rare ones) so that small phantoms hold positives of every kind.
PHANTOM_PREVALENCE = {k: max(0.08 if k in SIX else 0.015, REAL_COUNTS[k][0] / 7728)
                      for k in COLUMNS if k != NO_FINDING}


# ----------------------------------------------------------------------------- phantom writer

def dicom_variant(i: int, mono1: bool, compression: str | None) -> dict:
    """The :func:`~cxr_keras.data.images.write_dicom` options of the ``i``-th phantom image:
    by position, so that the labels and pictures do not depend on them (``compression``: the
    lossless codec this machine can write, or None for uncompressed files)."""
    options = {"monochrome1": mono1, "presentation_inverse": mono1 and i % 2 == 0}
    options.update({3: {"voi": "lut"}, 6: {"voi": "sigmoid"}, 8: {"modality": "lut"}}.get(i % 10, {}))
    if i % 20 == 9 and compression is not None:
        options["compression"] = compression
    if i % 25 == 12:
        options["frames"] = 2
    return options


def _render_one(job):
    root, rel, seed, size, findings, mirror, options = job
    img = phantom.render_chest(seed, size, findings, child=True).image
    if mirror:
        img = np.ascontiguousarray(img[:, ::-1])
    write_dicom(Path(root) / rel, img, **options)


def _findings(rng, diseases) -> tuple[tuple, bool]:
    out = []
    for d in diseases:
        choices = FINDING_MAP[d]
        if d == OTHER:
            choices = choices[int(rng.integers(len(choices)))]
        out += [f for f in choices if f not in out]
    return tuple(out), "Situs inversus" in diseases


def _row(image_id, rad, diseases) -> dict:
    row = {"image_id": image_id, "rad_ID": rad}
    row.update({c: "1.0" if c in diseases else "0.0" for c in COLUMNS})
    row[NO_FINDING] = "0.0" if diseases else "1.0"
    return row


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True, second_reader: float = 0.1,
                  min_test_positives: int = 5) -> Path:
    """Write an ``n``-image phantom VinDr-PCXR under ``out`` (about 15% test, as 1,397/9,125)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_test = 0 if n < 2 else max(1, int(round(n * 1397 / 9125)))
    rows = {"train": [], "test": []}
    jobs, test_rare = [], dict.fromkeys(RARE, 0)
    codec = next((c for c in ("jpegls", "jpeg2000") if can_compress_dicom(c)), None)
    for i in range(n):
        split = "train" if i < n - n_test else "test"
        diseases = [k for k, p in PHANTOM_PREVALENCE.items() if rng.random() < p][:2]
        if split == "test":  # the real test file has < 5 positives for every rare disease
            diseases = [d for d in diseases if d not in RARE or test_rare[d] < min_test_positives - 1]
            for d in diseases:
                if d in RARE:
                    test_rare[d] += 1
        image_id = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
        rad = f"R{int(rng.integers(1, 4))}"
        rows[split].append(_row(image_id, rad, diseases))
        if split == "train" and rng.random() < second_reader:
            pool = [d for d in ("Bronchitis", "Brocho-pneumonia", "Bronchiolitis", "Pneumonia")
                    if d not in diseases]
            second = diseases + ([str(rng.choice(pool))] if pool else [])  # the readers disagree
            rows[split].append(_row(image_id, f"R{int(rad[1]) % 3 + 1}", second))
        findings, mirror = _findings(rng, diseases)
        jobs.append((str(out), f"{split}/{image_id}.dicom", int(rng.integers(2**31)), size,
                     findings, mirror, dicom_variant(i, bool(rng.random() < 0.3), codec)))
    parallel_map(_render_one, jobs, workers, desc="pedicxr phantom", progress=progress)
    for split, name in LABEL_FILES.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(ID_COLUMNS + COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows[split])
        write_text(out / name, buf.getvalue())
    return out


# ----------------------------------------------------------------------------- reader

def read_labels(path) -> pd.DataFrame:
    """Read one image_labels_*.csv strictly and aggregate it to one row per image."""
    df = read_csv_checked(path, ID_COLUMNS + COLUMNS, dtype=str, keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    extra = [c for c in df.columns if c not in ID_COLUMNS + COLUMNS and not c.startswith("Unnamed")]
    if extra:
        raise DataError(f"{path}: unexpected column(s) {extra}; known: {list(ID_COLUMNS + COLUMNS)}")
    mat = parse_label_columns(df, COLUMNS, path, allowed=(1.0, 0.0))
    ids = df["image_id"].astype(str).str.strip()
    if (ids == "").any():
        i = int(np.flatnonzero((ids == "").to_numpy())[0])
        raise DataError(f"{path}: line {i + 2}, column 'image_id': empty image id")
    bad = ids.str.contains(r"[/\\\x00]") | ids.isin([".", ".."])
    if bad.any():  # the id names a file in train/ or test/: no folder parts, no way out
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: line {i + 2}, column 'image_id': {ids.iloc[i]!r} is not a file name")
    labels = pd.DataFrame(mat, columns=list(COLUMNS))
    labels.insert(0, "image_id", ids.to_numpy())
    agg = {c: ("min" if c == NO_FINDING else "max") for c in COLUMNS}
    out = labels.groupby("image_id", sort=False).agg(agg).reset_index()
    rads = (df.assign(image_id=ids).groupby("image_id", sort=False)["rad_ID"]
            .agg(lambda s: ";".join(sorted(set(map(str, s))))))
    out["rad_ID"] = rads.reindex(out["image_id"]).to_numpy()
    out["n_readers"] = labels.groupby("image_id", sort=False).size().reindex(out["image_id"]).to_numpy()
    return out


def fold_rare(df: pd.DataFrame, test_positives: dict, min_test_positives: int = 5):
    """Fold every non-six disease column with fewer than ``min_test_positives`` positive test
    images into Other disease. Returns (frame, label columns, folded columns)."""
    folded = [c for c in RARE if test_positives[c] < min_test_positives]
    kept = [c for c in RARE if c not in folded]
    if kept:
        warnings.warn(f"pedicxr: {kept} have >= {min_test_positives} positive test images and stay "
                      f"separate classes, so the table has more than the paper's six labels",
                      stacklevel=3)
    df = df.copy()
    if folded:
        df[OTHER] = df[[OTHER] + folded].max(axis=1)
    df = df.drop(columns=folded)
    labels = [c for c in SIX if c != OTHER] + kept + [OTHER]
    return df, labels, folded


def load_table(root, aggregate: str | None = "six", min_test_positives: int = 5,
               val_fraction: float = 0.2, label_fraction: float = 1.0, seed: int = 0,
               missing: str = "error") -> pd.DataFrame:
    """Read VinDr-PCXR under ``root`` (the folder holding train/, test/ and the label CSVs).

    Returns path, split (train/val/test), the labels (see the module docstring for
    ``aggregate``, ``min_test_positives``, ``val_fraction``, ``label_fraction``), ``image_id``,
    ``rad_ID`` and ``n_readers``. No patient_id: the dataset has none. The DICOMs are only
    listed; :func:`cxr_keras.data.images.read_image` decodes them (MONOCHROME1 inverted).
    ``missing="drop"`` drops rows whose DICOM is absent instead of raising.
    """
    root = Path(root)
    if aggregate not in ("six", None):
        raise DataError(f"pedicxr: aggregate must be 'six' or None, got {aggregate!r}")
    if not 0.0 < label_fraction <= 1.0:
        raise DataError(f"pedicxr: label_fraction must be in (0, 1], got {label_fraction}")
    if missing not in ("error", "drop"):
        raise DataError(f"pedicxr: missing must be 'error' or 'drop', got {missing!r}")
    parts = []
    for split, name in LABEL_FILES.items():
        t = read_labels(root / name)
        t.insert(0, "split", split)
        t.insert(0, "path", [str(resolve_path(root / split / f"{i}.dicom")) for i in t["image_id"]])
        parts.append(t)
    df = pd.concat(parts, ignore_index=True)
    df = check_files_exist(df, missing, root, "DICOM(s) listed in the label files")
    test_positives = {c: int((df.loc[df["split"] == "test", c] == 1).sum()) for c in COLUMNS}
    folded = []
    if aggregate == "six":
        df, labels, folded = fold_rare(df, test_positives, min_test_positives)
    else:
        labels = list(COLUMNS)
    df = split_off_validation(df, val_fraction, seed, by="image")
    if label_fraction < 1.0:
        train = np.flatnonzero((df["split"] == "train").to_numpy())
        if len(train):
            keep_n = max(1, int(round(label_fraction * len(train))))
            order = np.random.default_rng([seed, 101]).permutation(len(train))
            drop = np.sort(train[order[keep_n:]])
            df = df.drop(index=df.index[drop])
    df = finish_table(df, dataset=NAME, root=root, labels=labels)
    df.attrs.update(aggregate=aggregate, folded=folded, test_positives=test_positives,
                    min_test_positives=min_test_positives, label_fraction=label_fraction)
    return df
