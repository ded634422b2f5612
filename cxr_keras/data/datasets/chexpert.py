"""CheXpert v1.0 (and v1.0-small): phantom writer and reader for the official on-disk layout.

Layout (as downloaded; ``root`` is the folder that holds the dataset folder)::

    CheXpert-v1.0-small/train.csv       223,414 rows (64,540 patients), one per image
    CheXpert-v1.0-small/valid.csv       234 rows (200 patients), expert labels
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...
    CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg ...

The full-resolution download is laid out the same under ``CheXpert-v1.0``; the reader takes
whichever exists (``-small`` first) or ``folder=`` to choose, and also accepts ``root`` being the
dataset folder itself. CSV columns: ``Path,Sex,Age,Frontal/Lateral,AP/PA`` and the 14
observations :data:`LABELS`. ``Path`` is relative to the folder above the dataset folder
(``CheXpert-v1.0-small/train/patient00001/...``); the reader resolves it against the folder it
found (so a renamed dataset folder still works). Label values: ``1.0`` positive, ``0.0``
negative, ``-1.0`` uncertain, blank = not mentioned in the report. Labels are per study (both
views of a study carry the same row values). The official test set (500 patients) is hidden.

Reader choices (CHOICE, documented in the fidelity notes):

- ``uncertain``: ``"ones"`` (U-Ones, default), ``"zeros"`` (U-Zeros), ``"ignore"`` (NaN, masked by
  the losses) or a dict label -> policy, e.g. :data:`MIXED_POLICY` (mlrfnet: U-Ones for
  Atelectasis and Edema, U-Zeros for the others); a dict may hold a ``"default"`` key.
- ``blank``: ``"zeros"`` (default, the common practice: an observation the report does not
  mention is taken as absent) or ``"ignore"`` (NaN).
- splits: train.csv is split into ``train`` and a seeded ``val_fraction`` (default 10%) by
  patient (``val_by="patient"``, no leakage); valid.csv is returned as ``test`` because the
  official test set is hidden (this is what papers reporting "CheXpert validation" AUCs do).
- ``labels``: a subset, e.g. :data:`COMPETITION_LABELS`; ``frontal_only=True`` drops laterals.

Phantom: the observations map to phantom findings (:data:`FINDING_MAP`; Lung Opacity draws
Infiltration or Consolidation, Lung Lesion Nodule or Mass). An uncertain (-1) observation is
rendered with probability 0.5 (seeded), so "uncertain" images are a true mix of present and
absent findings. Laterals are the frontal phantom squeezed to half width on an air background
(labelled ``Lateral``, AP/PA blank). valid.csv is written with expert-style labels: only 1.0/0.0,
no blanks. Images are square ``size`` x ``size`` grey JPEGs (the real -small images are ~320 px
high, variable width).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import cv2
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
    parse_label_columns,
    path_under,
    read_csv_checked,
    resolve_path,
    split_off_validation,
)

NAME = "chexpert"
FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
          "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
          "Pleural Other", "Fracture", "Support Devices")
COLUMNS = META_COLUMNS + LABELS
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = ("ones", "zeros", "ignore")
# mlrfnet / CheXpert paper's best-per-observation: U-Ones for Atelectasis and Edema, U-Zeros else.
MIXED_POLICY = {k: ("ones" if k in ("Atelectasis", "Edema") else "zeros") for k in LABELS}
LABEL_POLICIES = ("mixed", "ones", "zeros")  # apply_uncertainty's, on labels read with NaN

# Observation -> phantom finding(s); a tuple means "one of these, drawn at random".
FINDING_MAP = {
    "Enlarged Cardiomediastinum": ("Enlarged_Cardiomediastinum",), "Cardiomegaly": ("Cardiomegaly",),
    "Lung Opacity": ("Infiltration", "Consolidation"), "Lung Lesion": ("Nodule", "Mass"),
    "Edema": ("Edema",), "Consolidation": ("Consolidation",), "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Atelectasis",), "Pneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Effusion",), "Pleural Other": ("Pleural_Thickening",),
    "Fracture": ("Fracture",), "Support Devices": ("Support_Devices",),
}
# Phantom (positive, uncertain, explicit negative) rates per observation, rest blank: the shape of
# the real train.csv (e.g. Lung Opacity and Support Devices ~50% positive, Atelectasis and
# Consolidation often uncertain), floored so that small phantoms hold every state.
PHANTOM_RATES = {
    "Enlarged Cardiomediastinum": (0.06, 0.06, 0.10), "Cardiomegaly": (0.12, 0.05, 0.06),
    "Lung Opacity": (0.35, 0.05, 0.05), "Lung Lesion": (0.05, 0.05, 0.05),
    "Edema": (0.20, 0.08, 0.10), "Consolidation": (0.07, 0.12, 0.12),
    "Pneumonia": (0.05, 0.08, 0.05), "Atelectasis": (0.15, 0.15, 0.05),
    "Pneumothorax": (0.08, 0.05, 0.25), "Pleural Effusion": (0.30, 0.06, 0.12),
    "Pleural Other": (0.05, 0.05, 0.05), "Fracture": (0.05, 0.05, 0.05),
    "Support Devices": (0.40, 0.05, 0.05),
}
_PATIENT = re.compile(r"(patient\d+)/(study\d+)/")


# ----------------------------------------------------------------------------- phantom writer

def _lateral(img: np.ndarray) -> np.ndarray:
    """A lateral-looking view: the frontal phantom squeezed to half width, centred on air."""
    h, w = img.shape
    half = cv2.resize(img, (max(1, w // 2), h), interpolation=cv2.INTER_AREA)
    out = np.full_like(img, int(np.percentile(img, 2)))
    x0 = (w - half.shape[1]) // 2
    out[:, x0:x0 + half.shape[1]] = half
    return out


def _render_one(job):
    root, rel, seed, size, findings, lateral = job
    img = phantom.render_chest(seed, size, findings).image
    write_image(Path(root) / rel, _lateral(img) if lateral else img)


def _fmt(v) -> str:
    return "" if v is None else f"{float(v):.1f}"


def _study_labels(rng, expert: bool) -> dict:
    """One study's row values: 1/0/-1/None (blank), or expert 1/0 only."""
    row = {}
    for name, (p_pos, p_unc, p_neg) in PHANTOM_RATES.items():
        u = rng.random()
        if expert:
            row[name] = 1.0 if u < p_pos else 0.0
        elif u < p_pos:
            row[name] = 1.0
        elif u < p_pos + p_unc:
            row[name] = -1.0
        elif u < p_pos + p_unc + p_neg:
            row[name] = 0.0
        else:
            row[name] = None
    pathology = [row[k] for k in PHANTOM_RATES if k != "Support Devices"]
    clean = all(v is None or v == 0.0 for v in pathology)
    row["No Finding"] = 1.0 if clean else (0.0 if expert else None)
    return row


def _findings(rng, row: dict) -> tuple:
    """Phantom findings for a study: positives always, uncertain ones with probability 0.5."""
    out = []
    for name, choices in FINDING_MAP.items():
        v = row[name]
        if v == 1.0 or (v == -1.0 and rng.random() < 0.5):
            f = str(choices[int(rng.integers(len(choices)))])
            if f not in out:
                out.append(f)
    return tuple(out)


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True, folder: str = FOLDERS[0]) -> Path:
    """Write an ``n``-image phantom CheXpert under ``out/<folder>`` (``out`` is the parent
    folder, as the ``Path`` column expects). About 12% of the images go to valid.csv."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_valid = 0 if n < 4 else max(2, int(round(0.12 * n)))
    records, jobs, pid = {"train": [], "valid": []}, [], 0
    for part, count in (("train", n - n_valid), ("valid", n_valid)):
        rows = records[part]
        while len(rows) < count:
            pid += 1
            sex, age = str(rng.choice(["Male", "Female"])), int(rng.integers(18, 91))
            for study in range(1, int(rng.geometric(0.5)) + 1):
                if len(rows) >= count:
                    break
                labels = _study_labels(rng, expert=part == "valid")
                findings = _findings(rng, labels)
                views = ["frontal"] + (["lateral"] if rng.random() < 0.3 else [])
                for v, view in enumerate(views[:count - len(rows)], start=1):
                    rel = f"{folder}/{part}/patient{pid:05d}/study{study}/view{v}_{view}.jpg"
                    rows.append(dict(Path=rel, Sex=sex, Age=age,
                                     **{"Frontal/Lateral": view.capitalize(),
                                        "AP/PA": "" if view == "lateral" else
                                        str(rng.choice(["AP", "PA"], p=[0.75, 0.25]))},
                                     **{k: _fmt(labels[k]) for k in LABELS}))
                    jobs.append((str(out), rel, int(rng.integers(2**31)), size, findings,
                                 view == "lateral"))
    parallel_map(_render_one, jobs, workers, desc="chexpert phantom", progress=progress)
    for part, rows in records.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(out / folder / f"{part}.csv", buf.getvalue())
    return out


# ----------------------------------------------------------------------------- reader

def dataset_dir(root, folder: str | None = None) -> Path:
    """The CheXpert folder under ``root`` (``CheXpert-v1.0-small`` or ``CheXpert-v1.0``), or
    ``root`` itself if it holds train.csv."""
    errors = []
    for name in ([folder] if folder else FOLDERS):
        try:
            d = find_dataset_dir(root, name, marker="train.csv")
        except DataError as e:
            errors.append(str(e))
            continue
        return d
    raise DataError(f"no CheXpert dataset folder under {root}: " + "; ".join(errors))


def _policy_for(uncertain, labels) -> dict:
    if isinstance(uncertain, str):
        if uncertain not in POLICIES:
            raise DataError(f"chexpert: uncertain must be one of {POLICIES} or a dict, got {uncertain!r}")
        return {k: uncertain for k in labels}
    if not isinstance(uncertain, dict):
        raise DataError(f"chexpert: uncertain must be one of {POLICIES} or a dict, got {uncertain!r}")
    unknown = sorted(set(uncertain) - set(LABELS) - {"default"})
    if unknown:
        raise DataError(f"chexpert: uncertain policy names unknown label(s) {unknown}; known: {list(LABELS)}")
    bad = {k: v for k, v in uncertain.items() if v not in POLICIES}
    if bad:
        raise DataError(f"chexpert: unknown uncertainty policy value(s) {bad}; use {POLICIES}")
    missing = [k for k in labels if k not in uncertain and "default" not in uncertain]
    if missing:
        raise DataError(f"chexpert: uncertain policy has no entry for {missing}; give every selected "
                        f"label or a 'default' key")
    return {k: uncertain.get(k, uncertain.get("default")) for k in labels}


def read_csv(path, labels=LABELS) -> tuple[pd.DataFrame, np.ndarray]:
    """Read train.csv or valid.csv strictly: returns the text frame and the raw label matrix
    (1, 0, -1, NaN = blank) for ``labels``. Unknown values raise DataError naming line and column."""
    df = read_csv_checked(path, COLUMNS, dtype=str, keep_default_na=False)
    raw = parse_label_columns(df, labels, path, allowed=(1.0, 0.0, -1.0), blank_ok=True)
    views = df["Frontal/Lateral"].str.strip()
    bad = ~views.isin(["Frontal", "Lateral"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: line {i + 2}, column 'Frontal/Lateral': unknown value "
                        f"{df['Frontal/Lateral'].iloc[i]!r}; expected Frontal or Lateral")
    return df, raw


def apply_policies(raw: np.ndarray, labels, uncertain="ones", blank: str = "zeros") -> np.ndarray:
    """Map a raw matrix (1, 0, -1, NaN = blank) to training targets (1, 0, NaN = ignore)."""
    if blank not in ("zeros", "ignore"):
        raise DataError(f"chexpert: blank must be 'zeros' or 'ignore', got {blank!r}")
    policy = _policy_for(uncertain, labels)
    out = raw.astype(np.float32).copy()
    for j, name in enumerate(labels):
        unc = raw[:, j] == -1.0
        out[unc, j] = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[policy[name]]
        if blank == "zeros":
            out[np.isnan(raw[:, j]), j] = 0.0
    return out


def _resolve(ds_dir: Path, rel: str, where: str) -> Path:
    parts = Path(rel.strip()).parts
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]  # relative to the folder above; resolve against the folder we found
    return path_under(ds_dir, Path(*parts) if parts else "", where)


def load_table(root, uncertain="ones", blank: str = "zeros", frontal_only: bool = False,
               labels=None, val_fraction: float = 0.1, val_by: str = "patient", seed: int = 0,
               folder: str | None = None, missing: str = "error") -> pd.DataFrame:
    """Read CheXpert under ``root`` (the folder holding ``CheXpert-v1.0-small`` or
    ``CheXpert-v1.0``, or that folder itself).

    Splits: ``train`` and ``val`` (a seeded ``val_fraction`` of train.csv, by patient by default)
    and ``test`` = valid.csv (the official test set is hidden). ``uncertain`` and ``blank`` are
    the label policies described in the module docstring; ``labels`` selects observations (default
    all 14, in the CSV's order); ``frontal_only`` keeps frontal views. ``missing="drop"`` drops
    rows whose image is absent instead of raising. Extra columns: patient_id (``patient00001``),
    study_id (``patient00001/study1``), sex, age, view (Frontal/Lateral), projection (AP/PA/blank).
    """
    labels = tuple(LABELS if labels is None else labels)
    unknown = [k for k in labels if k not in LABELS]
    if unknown or not labels:
        raise DataError(f"chexpert: unknown label(s) {unknown or labels}; known: {list(LABELS)}")
    if missing not in ("error", "drop"):
        raise DataError(f"chexpert: missing must be 'error' or 'drop', got {missing!r}")
    ds_dir = dataset_dir(root, folder)
    parts = []
    for csv_name, split in (("train.csv", "train"), ("valid.csv", "test")):
        path = ds_dir / csv_name
        df, raw = read_csv(path, labels)
        table = pd.DataFrame(apply_policies(raw, labels, uncertain, blank), columns=list(labels))
        rel = df["Path"].astype(str).str.strip()
        ids = rel.str.extract(_PATIENT)
        if ids[0].isna().any():
            i = int(np.flatnonzero(ids[0].isna().to_numpy())[0])
            raise DataError(f"{path}: line {i + 2}, column 'Path': {rel.iloc[i]!r} does not hold "
                            f"a patientNNNNN/studyN/ folder")
        table.insert(0, "path", [str(_resolve(ds_dir, r, f"{path}: line {i + 2}, column 'Path'"))
                                 for i, r in enumerate(rel)])
        table.insert(1, "split", split)
        table.insert(2, "patient_id", ids[0].to_numpy())
        table["study_id"] = (ids[0] + "/" + ids[1]).to_numpy()
        table["sex"] = df["Sex"].to_numpy()
        table["age"] = pd.to_numeric(df["Age"], errors="coerce").to_numpy()
        table["view"] = df["Frontal/Lateral"].str.strip().to_numpy()
        table["projection"] = df["AP/PA"].str.strip().to_numpy()
        parts.append(table)
    df = pd.concat(parts, ignore_index=True)
    if frontal_only:
        df = df.loc[df["view"] == "Frontal"].reset_index(drop=True)
    df = check_files_exist(df, missing, ds_dir, "image(s) listed in the CSVs")
    df["path"] = [str(resolve_path(p)) for p in df["path"]]
    df = split_off_validation(df, val_fraction, seed, by=val_by)
    df = finish_table(df, dataset=NAME, root=root, labels=labels)
    df.attrs.update(uncertain=_policy_for(uncertain, labels), blank=blank, folder=ds_dir.name)
    return df


def apply_uncertainty(y: np.ndarray, labels, policy: str) -> np.ndarray:
    """Labels read with ``uncertain="ignore"`` (NaN where uncertain) under ``policy``: NaN becomes
    1 (``"ones"``, U-Ones), 0 (``"zeros"``, U-Zeros), or per observation (``"mixed"``:
    :data:`MIXED_POLICY`, U-Ones for Atelectasis and Edema, U-Zeros for the others). One cache
    read that way serves every policy."""
    if policy not in LABEL_POLICIES:
        raise DataError(f"uncertain must be one of {LABEL_POLICIES}, got {policy!r}")
    y = np.array(y, np.float32, copy=True)
    for j, name in enumerate(labels):
        rule = MIXED_POLICY.get(name, "zeros") if policy == "mixed" else policy
        col = y[:, j]
        col[np.isnan(col)] = 1.0 if rule == "ones" else 0.0
    return y
