"""Montgomery County chest X-ray set (NLM): phantom writer and reader for the official layout.

Layout (as downloaded, NLM-MontgomeryCXRSet.zip; ``root`` is the folder holding MontgomerySet)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png       138 images: _0 normal (80), _1 tuberculosis (58)
    MontgomerySet/ManualMask/leftMask/<same name>  patient's left lung (image right), 0/255
    MontgomerySet/ManualMask/rightMask/<same name> patient's right lung (image left), 0/255
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt  sex, age, radiologist reading
    MontgomerySet/NLM-MontgomeryCXRSet-ReadMe.pdf  (optional)

The real images are 4020x4892 or 4892x4020, 12-bit content; the phantom is square (``size``) and
writes every third image as a 16-bit PNG so that readers exercise 16-bit decoding.
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
from ..tables import find_dataset_dir, finish_table, one_split_or_random, resolve_path

NAME = "montgomery"
CLASSES = ("normal", "tuberculosis")
SET_DIR = "MontgomerySet"
IMAGE_DIR = "CXR_png"
LEFT_DIR = "ManualMask/leftMask"
RIGHT_DIR = "ManualMask/rightMask"
READINGS_DIR = "ClinicalReadings"
NAME_RE = re.compile(r"^MCUCXR_(\d+)_([01])\.png$", re.IGNORECASE)
REAL_COUNTS = {"normal": 80, "tuberculosis": 58}
TB_READINGS = ("right upper lobe infiltrate, consistent with TB",
               "bilateral upper lobe cavitary disease", "left apical pleural thickening, old TB",
               "calcified granulomas, right hilum", "miliary pattern")


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The images :func:`write_phantom` writes for these arguments: one dict per image with the
    file ``name``, ``patient_id``, ``label``, renderer ``seed`` and ``findings``, ``bits`` (8 or
    16), ``sex`` and ``age``. Deterministic, so tests can re-render any image."""
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(np.arange(1, max(400, 3 * n) + 1), size=n, replace=False))
    n_tb = int(round(n * REAL_COUNTS["tuberculosis"] / sum(REAL_COUNTS.values())))
    if n >= 2:
        n_tb = min(max(n_tb, 1), n - 1)  # both classes present in small sets
    labels = rng.permutation(np.r_[np.zeros(n - n_tb, int), np.ones(n_tb, int)])
    plan = []
    for i, (num, label) in enumerate(zip(numbers, labels)):
        findings = (str(rng.choice(["TB_Active", "TB_Latent"])),) if label else ()
        plan.append(dict(name=f"MCUCXR_{int(num):04d}_{int(label)}.png", patient_id=int(num),
                         label=int(label), seed=int(rng.integers(2**31)), findings=findings,
                         bits=16 if i % 3 == 1 else 8, sex=str(rng.choice(["M", "F"])),
                         age=int(rng.integers(5, 90)),
                         reading=str(rng.choice(TB_READINGS)) if label else "normal"))
    return plan


def _render_one(job):
    set_dir, item, size = job
    ph = phantom.render_chest(item["seed"], size, item["findings"])
    set_dir = Path(set_dir)
    write_image(set_dir / IMAGE_DIR / item["name"], ph.image, bits=item["bits"])
    write_image(set_dir / LEFT_DIR / item["name"], (np.asarray(ph.lung_left) > 0).astype(np.uint8) * 255)
    write_image(set_dir / RIGHT_DIR / item["name"], (np.asarray(ph.lung_right) > 0).astype(np.uint8) * 255)
    text = (f"Patient's Sex: {item['sex']}\nPatient's Age: {item['age']:03d}Y\n{item['reading']}\n")
    write_text(set_dir / READINGS_DIR / item["name"].replace(".png", ".txt"), text)
    return item["name"]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom Montgomery set under ``out/MontgomerySet`` (returns ``out``).

    TB images render ``TB_Active`` or ``TB_Latent``; the TB share follows the real 58/138.
    """
    out = Path(out)
    set_dir = out / SET_DIR
    jobs = [(str(set_dir), item, size) for item in phantom_plan(n, size, seed)]
    parallel_map(_render_one, jobs, workers, desc="montgomery phantom", progress=progress)
    return out


# ----------------------------------------------------------------------------- reader

def _parse_reading(path: Path) -> dict:
    """Sex, age (years) and the free-text reading from a ClinicalReadings file; tolerant, since
    the files are free text (missing fields come back as None)."""
    out = {"sex": None, "age": None, "reading": None}
    if not path.exists():
        return out
    rest = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        low = line.lower()
        if low.startswith("patient's sex"):
            out["sex"] = line.split(":", 1)[-1].strip() or None
        elif low.startswith("patient's age"):
            m = re.search(r"(\d+)", line.split(":", 1)[-1])
            out["age"] = int(m.group(1)) if m else None
        elif line:
            rest.append(line)
    out["reading"] = " ".join(rest) or None
    return out


def load_table(root, split: str = "test", fractions=(0.7, 0.1, 0.2), seed: int = 0,
               missing_masks: str = "error", masks: bool = True) -> pd.DataFrame:
    """Read the Montgomery set under ``root`` (the folder holding MontgomerySet, or MontgomerySet
    itself).

    Columns: ``path``, ``split``, ``patient_id`` (the 4-digit number), ``label`` (0 normal, 1
    tuberculosis; from the ``_0``/``_1`` suffix), ``mask_left`` and ``mask_right`` (the two
    ManualMask files, OR-ed by the cache: ``df.attrs["mask_columns"]``), ``image`` (file name),
    and ``sex``, ``age``, ``reading`` from ClinicalReadings when present.

    ``split="test"`` (default): every row is test (multiloss evaluates its segmentation on all
    138 images); ``"train"``: every row is train (mtpret uses the set for pretraining only);
    ``"random"``: a seeded split with ``fractions`` (each patient has one image).
    ``missing_masks="error"`` raises a DataError naming absent mask files; ``"drop"`` drops
    those rows. ``masks=False`` reads the set as an image source only (mtpret's pretraining):
    no mask columns, and the ManualMask folders are neither needed nor checked.
    """
    if missing_masks not in ("error", "drop"):
        raise DataError(f"montgomery: missing_masks must be 'error' or 'drop', got {missing_masks!r}")
    set_dir = find_dataset_dir(root, SET_DIR, marker=IMAGE_DIR)
    img_dir = set_dir / IMAGE_DIR
    if not img_dir.is_dir():
        raise DataError(f"missing image folder: {img_dir}")
    names = sorted(p.name for p in img_dir.iterdir() if NAME_RE.match(p.name))
    if not names:
        raise DataError(f"{img_dir}: no images named MCUCXR_####_0.png / MCUCXR_####_1.png")
    rows, absent = [], []
    for name in names:
        m = NAME_RE.match(name)
        left, right = set_dir / LEFT_DIR / name, set_dir / RIGHT_DIR / name
        gone = [str(p) for p in (left, right) if masks and not p.exists()]
        if gone:
            absent.extend(gone)
            if missing_masks == "drop":
                continue
        row = dict(path=str(resolve_path(img_dir / name)), patient_id=int(m.group(1)),
                   label=int(m.group(2)), mask_left=str(resolve_path(left)),
                   mask_right=str(resolve_path(right)), image=name)
        row.update(_parse_reading(set_dir / READINGS_DIR / name.replace(".png", ".txt")))
        if not masks:
            del row["mask_left"], row["mask_right"]
        rows.append(row)
    if absent and missing_masks == "error":
        raise DataError(f"{set_dir}: {len(absent)} mask file(s) missing, e.g. {absent[:5]}")
    if not rows:
        raise DataError(f"{set_dir}: no image has both lung masks")
    df = pd.DataFrame(rows)
    df = one_split_or_random(df, split, ("test", "train"), fractions, seed, NAME)
    return finish_table(df, dataset=NAME, root=set_dir.parent, classes=CLASSES,
                        mask_columns=["mask_left", "mask_right"] if masks else None)
