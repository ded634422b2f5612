"""Kermany pediatric pneumonia (Guangzhou Women and Children's Medical Center): phantom writer and
reader for the official on-disk layout.

Layout (as downloaded)::

    chest_xray/train/NORMAL/*.jpeg, chest_xray/train/PNEUMONIA/*.jpeg
    chest_xray/val/{NORMAL,PNEUMONIA}/*.jpeg      Kaggle copy only: 16 images (8 + 8) taken out of train
    chest_xray/test/{NORMAL,PNEUMONIA}/*.jpeg

Two file-naming schemes, both read:

- original (Mendeley Data v2 = the Kaggle copy): normals ``IM-0115-0001.jpeg`` and
  ``NORMAL2-IM-1427-0001.jpeg``; pneumonia ``person1_bacteria_1.jpeg``, ``person1_virus_6.jpeg``;
- newer Mendeley release: ``NORMAL-<id>-<n>.jpeg``, ``BACTERIA-<id>-<n>.jpeg``,
  ``VIRUS-<id>-<n>.jpeg`` (train and test only, no val folder; it may sit under ``CellData/``).

The subtype (bacterial / viral) exists only in the file name. Patient ids: ``person<id>`` for the
original pneumonia names (bacterial and viral images share the numbering), ``IM-<id>`` and
``NORMAL2-IM-<id>`` for the original normals (two numberings that we do not merge), and ``<id>``
for the newer scheme. A file whose name matches neither scheme, or whose name contradicts its
NORMAL/PNEUMONIA folder, raises DataError naming it; hidden files (``.DS_Store``) are skipped.

Reader choices (CHOICE, documented in the fidelity notes):

- ``classes="three"``: ``label`` 0/1/2 = normal / bacterial / viral (multiloss); ``"binary"``:
  0/1 = normal / pneumonia (mtpret).
- ``split="official"``: train and test folders as given. Validation: if ``val_fraction`` is None
  and the val folder has images, the val folder is used as is (16 images in the Kaggle copy);
  otherwise the val folder (if any) is merged back into train and a seeded ``val_fraction`` of
  train is drawn as validation (0.1 when the val folder is empty or absent and ``val_fraction``
  is None): the multiloss protocol (authors' train/test, 10% of train as validation with a fixed
  seed). ``val_by="image"`` (default) or ``"patient"``. ``df.attrs["val_source"]`` says which.
- ``split="random"``: all images, a seeded split with ``fractions`` (default 80/10/10, mtpret's
  4686/585/585), by image or patient (``val_by``).

Phantom: pediatric chests (``child=True``) with Bacterial or Viral findings, written as JPEG;
about 20% are RGB files of grey content, as some of the originals. ``scheme="original"`` writes
the Kaggle layout (with a small val folder carved from train, half normal, half pneumonia);
``scheme="new"`` writes the same pictures and classes under the newer names with the val images
left in train (the newer release has no val folder).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import find_dataset_dir, finish_table, resolve_path, split_by_fractions, split_off_validation

NAME = "kermany"
FOLDER = "chest_xray"
SPLIT_DIRS = ("train", "val", "test")
CLASS_DIRS = ("NORMAL", "PNEUMONIA")
THREE = ("normal", "bacterial", "viral")
BINARY = ("normal", "pneumonia")
IMAGE_SUFFIXES = (".jpeg", ".jpg")

_ORIG_NORMAL = re.compile(r"^(NORMAL2-)?IM-(\d+)-(\d+)\.jpe?g$", re.IGNORECASE)
_ORIG_PNEU = re.compile(r"^person(\d+)_(bacteria|virus)_(\d+)\.jpe?g$", re.IGNORECASE)
_NEW = re.compile(r"^(NORMAL|BACTERIA|VIRUS)-(\d+)-(\d+)\.jpe?g$", re.IGNORECASE)

# Real image counts (Mendeley v2 train = Kaggle train + val): normal / bacterial / viral.
REAL_COUNTS = {"train": (1349, 2538, 1345), "test": (234, 242, 148)}
KAGGLE_COUNTS = {"train": (1341, 2530, 1345), "val": (8, 8, 0), "test": (234, 242, 148)}


def parse_name(name: str, folder: str | None = None, path=None) -> tuple[str, str, str]:
    """Return (subtype, patient_id, scheme) for a Kermany file name; DataError if it matches no
    scheme or contradicts its class ``folder`` (NORMAL / PNEUMONIA)."""
    where = path if path is not None else name
    m = _ORIG_NORMAL.match(name)
    if m:
        subtype, pid, scheme = "normal", f"{'NORMAL2-' if m.group(1) else ''}IM-{m.group(2)}", "original"
    elif (m := _ORIG_PNEU.match(name)):
        subtype = "bacterial" if m.group(2).lower() == "bacteria" else "viral"
        pid, scheme = f"person{int(m.group(1))}", "original"
    elif (m := _NEW.match(name)):
        subtype = {"normal": "normal", "bacteria": "bacterial", "virus": "viral"}[m.group(1).lower()]
        pid, scheme = str(int(m.group(2))), "new"
    else:
        raise DataError(f"kermany: file name matches neither naming scheme (IM-####-####.jpeg, "
                        f"NORMAL2-IM-####-####.jpeg, person<id>_bacteria|virus_<n>.jpeg, "
                        f"NORMAL|BACTERIA|VIRUS-<id>-<n>.jpeg): {where}")
    if folder is not None and (folder.upper() == "NORMAL") != (subtype == "normal"):
        raise DataError(f"kermany: a {subtype} file name in the {folder} folder: {where}")
    return subtype, pid, scheme


# ----------------------------------------------------------------------------- phantom writer

def _render_one(job):
    root, rel, seed, size, subtype, rgb = job
    findings = () if subtype == "normal" else ({"bacterial": "Bacterial", "viral": "Viral"}[subtype],)
    img = phantom.render_chest(seed, size, findings, child=True).image
    write_image(Path(root) / rel, img, rgb=rgb)


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True, scheme: str = "original") -> Path:
    """Write an ``n``-image phantom under ``out/chest_xray`` (about 11% test, as 624/5,856).

    The pictures, classes, patients and test split do not depend on ``scheme``; only the names
    and the val folder (original only) do.
    """
    if scheme not in ("original", "new"):
        raise DataError(f"kermany: scheme must be 'original' or 'new', got {scheme!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    p_class = np.array(REAL_COUNTS["train"], float) / sum(REAL_COUNTS["train"])
    images, by_patient, pid = [], {}, 0
    while len(images) < n:
        pid += 1
        subtype = THREE[int(rng.choice(3, p=p_class))]
        normal2 = bool(rng.random() < 0.4)  # original scheme: IM-... or NORMAL2-IM-... numbering
        for _ in range(min(int(rng.geometric(0.6)), n - len(images))):
            images.append(dict(pid=pid, subtype=subtype, seed=int(rng.integers(2**31)),
                               rgb=bool(rng.random() < 0.2), normal2=normal2))
            by_patient.setdefault(pid, []).append(images[-1])
    # test: whole patients until ~10.7% of the images; val: a few train images, half normal.
    n_test, in_test = (0 if n < 2 else max(1, int(round(n * 624 / 5856)))), 0
    for p in rng.permutation(sorted(by_patient)):
        if in_test >= n_test:
            break
        for im in by_patient[int(p)]:
            im["split"] = "test"
        in_test += len(by_patient[int(p)])
    train = [im for im in images if "split" not in im]
    n_val = 0 if len(train) < 10 else max(2, int(round(n * 16 / 5856)))
    normals = [im for im in train if im["subtype"] == "normal"]
    pneus = [im for im in train if im["subtype"] != "normal"]
    for group, k in ((normals, n_val // 2), (pneus, n_val - n_val // 2)):
        for j in rng.permutation(len(group))[:k]:
            group[j]["split"] = "val"
    counters, jobs = dict.fromkeys(THREE, 0), []
    for im in images:
        split = im.get("split", "train")
        counters[im["subtype"]] += 1
        k, p, sub = counters[im["subtype"]], im["pid"], im["subtype"]
        if scheme == "original":
            if sub == "normal":
                name = f"{'NORMAL2-' if im['normal2'] else ''}IM-{p:04d}-{k:04d}.jpeg"
            else:
                name = f"person{p}_{'bacteria' if sub == 'bacterial' else 'virus'}_{k}.jpeg"
        else:
            split = "train" if split == "val" else split
            prefix = {"normal": "NORMAL", "bacterial": "BACTERIA", "viral": "VIRUS"}[sub]
            name = f"{prefix}-{10000 + p}-{k:04d}.jpeg"
        cls = "NORMAL" if sub == "normal" else "PNEUMONIA"
        jobs.append((str(out), f"{FOLDER}/{split}/{cls}/{name}", im["seed"], size, sub, im["rgb"]))
    parallel_map(_render_one, jobs, workers, desc="kermany phantom", progress=progress)
    return out


# ----------------------------------------------------------------------------- reader

def dataset_dir(root) -> Path:
    """``root/chest_xray``, ``root/CellData/chest_xray`` or ``root`` itself (holding train/)."""
    root = Path(root)
    if not (root / FOLDER).is_dir() and (root / "CellData" / FOLDER).is_dir():
        root = root / "CellData"
    return find_dataset_dir(root, FOLDER, marker="train")


def list_images(root) -> pd.DataFrame:
    """One row per image: path, folder split, subtype, patient_id, scheme."""
    ds = dataset_dir(root)
    rows = []
    for split in SPLIT_DIRS:
        for cls in CLASS_DIRS:
            d = ds / split / cls
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                subtype, pid, scheme = parse_name(f.name, cls, f)
                rows.append(dict(path=str(resolve_path(f)), split=split, patient_id=pid,
                                 subtype=subtype, scheme=scheme))
    if not rows:
        raise DataError(f"kermany: no images under {ds}/{{train,val,test}}/{{NORMAL,PNEUMONIA}}")
    df = pd.DataFrame(rows)
    for split in ("train", "test"):
        if not (df["split"] == split).any():
            raise DataError(f"kermany: no images in {ds / split}")
    return df


def load_table(root, classes: str = "three", split: str = "official", val_fraction=None,
               val_by: str = "image", seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    """Read the Kermany pneumonia set under ``root`` (the folder holding ``chest_xray``, or
    ``chest_xray`` itself). See the module docstring for ``classes``, ``split``, ``val_fraction``
    (None = the val folder if it has images, else 0.1 of train) and ``fractions``. Columns: path,
    split, patient_id, label, subtype (normal/bacterial/viral), scheme (original/new)."""
    if classes not in ("three", "binary"):
        raise DataError(f"kermany: classes must be 'three' or 'binary', got {classes!r}")
    df = list_images(root)
    if split == "official":
        n_val = int((df["split"] == "val").sum())
        if val_fraction is None and n_val > 0:
            source = f"val folder ({n_val} images)"
        else:
            frac = 0.1 if val_fraction is None else float(val_fraction)
            df.loc[df["split"] == "val", "split"] = "train"
            df = split_off_validation(df, frac, seed, by=val_by)
            source = (f"{frac:g} of train (val folder merged into train: {n_val} images), "
                      f"by {val_by}, seed {seed}")
    elif split == "random":
        df = split_by_fractions(df, fractions, seed, by=val_by)
        source = f"random split {tuple(fractions)} by {val_by}, seed {seed}"
    else:
        raise DataError(f"kermany: split must be 'official' or 'random', got {split!r}")
    names = THREE if classes == "three" else BINARY
    df["label"] = [THREE.index(s) if classes == "three" else int(s != "normal") for s in df["subtype"]]
    df = finish_table(df, dataset=NAME, root=root, classes=names)
    df.attrs["val_source"] = source
    return df
