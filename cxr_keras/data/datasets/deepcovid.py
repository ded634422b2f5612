"""Deep-COVID (Minaee et al. 2020, "COVID-Xray-5k"): phantom writer and reader for the layout of
the authors' download.

Layout (``data_upload_v3.zip``; ``root`` is the folder holding ``data_upload_v3``, or that folder,
or a copy whose train/ and test/ sit under ``data/``)::

    data_upload_v3/train/covid/*   84 COVID-19 images (JPEG / PNG, mixed names and sizes)
    data_upload_v3/train/non/*     2,000 non-COVID images (CheXpert: normal and other findings)
    data_upload_v3/test/covid/*    100
    data_upload_v3/test/non/*      3,000

The class is the folder (``covid`` -> 1, ``non`` -> 0; ``non-covid`` / ``non_covid`` /
``noncovid`` are read as ``non``, any case). Images are ``.jpg``, ``.jpeg`` or ``.png`` in any
case; hidden files and the desktop's ``Thumbs.db`` / ``desktop.ini`` are skipped, and any other
file raises a DataError naming it (an unexpected file in a class folder is more likely a wrong
folder than noise).

Splits (CHOICE, docs/FIDELITY.md): the official train and test folders (mtpret's Table I: 2,084
"train" / 3,100 "validation", the latter being the test folder; there is no third split). The
validation split the recipes select epochs on is a seeded ``val_fraction`` of train drawn per
class (so both classes are in it); ``val_fraction=0`` keeps no validation.

Phantom: adult chests; COVID images render bilateral viral interstitial change with patchy
consolidation (``Viral`` + ``Consolidation``), non-COVID ones are normal or carry one other
finding (as CheXpert's mix). Files alternate JPEG and PNG. The phantom over-represents COVID
(``covid_share``, default 0.25 against the real 3.5%) so that small phantoms have positives in
every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import finish_table, resolve_path

NAME = "deepcovid"
FOLDER = "data_upload_v3"
CLASSES = ("non_covid", "covid")
SPLIT_DIRS = ("train", "test")
CLASS_DIRS = {"covid": 1, "non": 0, "non-covid": 0, "non_covid": 0, "noncovid": 0}
SUFFIXES = (".jpg", ".jpeg", ".png")
JUNK = ("thumbs.db", "desktop.ini")  # written by file browsers, not part of the set
REAL_COUNTS = {"train": (2000, 84), "test": (3000, 100)}  # (non-COVID, COVID)
COVID_FINDINGS = ("Viral", "Consolidation")
OTHER_FINDINGS = ("Cardiomegaly", "Effusion", "Atelectasis", "Edema", "Support_Devices",
                  "Pneumothorax", "Nodule")


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0, covid_share: float = 0.25) -> list:
    """The images :func:`write_phantom` writes: dicts with ``rel`` (path under the set folder),
    ``split``, ``label``, renderer ``seed`` and ``findings``. Deterministic; the train share
    follows the real 2,084 / 5,184, and each split holds both classes once it has two images."""
    rng = np.random.default_rng(seed)
    n_train = int(round(n * sum(REAL_COUNTS["train"]) / 5184))
    plan = []
    for split, count in (("train", n_train), ("test", n - n_train)):
        n_cov = int(round(count * covid_share))
        if count >= 2:
            n_cov = min(max(n_cov, 1), count - 1)
        labels = rng.permutation(np.r_[np.zeros(count - n_cov, int), np.ones(n_cov, int)])
        for i, label in enumerate(labels):
            if label:
                findings = COVID_FINDINGS
                name = f"covid-{split}-{i:04d}-PA" + (".jpg" if i % 2 else ".png")
            else:
                findings = (str(rng.choice(OTHER_FINDINGS)),) if rng.random() < 0.4 else ()
                name = f"patient{10000 + i:05d}_study1_view1_frontal.jpg"
            folder = "covid" if label else "non"
            plan.append(dict(rel=f"{split}/{folder}/{name}", split=split, label=int(label),
                             seed=int(rng.integers(2**31)), findings=findings))
    return plan


def _render_one(job):
    set_dir, item, size = job
    img = phantom.render_chest(item["seed"], size, item["findings"]).image
    write_image(Path(set_dir) / item["rel"], img)
    return item["rel"]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True, covid_share: float = 0.25) -> Path:
    """Write an ``n``-image phantom under ``out/data_upload_v3`` (returns ``out``)."""
    out = Path(out)
    jobs = [(str(out / FOLDER), item, size) for item in phantom_plan(n, size, seed, covid_share)]
    parallel_map(_render_one, jobs, workers, desc="deepcovid phantom", progress=progress)
    return out


# ----------------------------------------------------------------------------- reader

def dataset_dir(root) -> Path:
    """``root/data_upload_v3``, ``root/data`` or ``root`` itself: the folder holding train/."""
    root = Path(root)
    for d in (root / FOLDER, root / "data", root):
        if (d / "train").is_dir():
            return d
    raise DataError(f"deepcovid: no train/ folder under {root / FOLDER}, {root / 'data'} or {root}")


def list_images(root) -> pd.DataFrame:
    """One row per image file: path, split (train/test), label, folder, image."""
    ds = dataset_dir(root)
    rows, found = [], {}
    for split in SPLIT_DIRS:
        d = ds / split
        if not d.is_dir():
            raise DataError(f"deepcovid: missing folder {d}")
        for sub in sorted(d.iterdir()):
            if sub.name.startswith("."):
                continue
            if not sub.is_dir() or sub.name.lower() not in CLASS_DIRS:
                raise DataError(f"deepcovid: unexpected entry {sub} (class folders are covid and "
                                "non)")
            label = CLASS_DIRS[sub.name.lower()]
            found[(split, label)] = found.get((split, label), 0)
            for f in sorted(sub.iterdir()):
                if f.name.startswith(".") or f.name.lower() in JUNK:
                    continue
                if not f.is_file() or f.suffix.lower() not in SUFFIXES:
                    raise DataError(f"deepcovid: not an image ({', '.join(SUFFIXES)}): {f}")
                rows.append(dict(path=str(resolve_path(f)), split=split, label=label,
                                 folder=sub.name, image=f.name))
                found[(split, label)] += 1
    for split in SPLIT_DIRS:
        for label, folder in ((1, "covid"), (0, "non")):
            if not found.get((split, label)):
                raise DataError(f"deepcovid: no images in {ds / split / folder}")
    return pd.DataFrame(rows)


def load_table(root, val_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Read Deep-COVID under ``root``. Columns: path, split (train / val / test), label (0
    non-COVID, 1 COVID; ``df.attrs["classes"]``), folder, image. ``val_fraction`` of each
    class's training images (seeded) becomes validation; the test folder is the test split."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"deepcovid: val_fraction must be in [0, 1), got {val_fraction}")
    df = list_images(root)
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        idx = np.flatnonzero(((df["split"] == "train") & (df["label"] == label)).to_numpy())
        k = int(round(val_fraction * len(idx)))
        if val_fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        df.iloc[rng.permutation(idx)[:k], df.columns.get_loc("split")] = "val"
    df = finish_table(df, dataset=NAME, root=dataset_dir(root), classes=CLASSES)
    df.attrs["val_source"] = f"{val_fraction:g} of each class of train, seed {seed}"
    return df
