"""Shenzhen Hospital chest X-ray set (NLM "China set"): phantom writer and reader for the official
layout.

Layout (as downloaded, ChinaSet_AllFiles.zip; ``root`` is the folder holding ChinaSet_AllFiles)::

    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png          662 images: _0 normal (326), _1 TB (336)
    ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt  first line sex and age, then the reading
    ChinaSet_AllFiles/NLM-ChinaCXRSet-ReadMe.docx         (optional)

The real images are about 3000x3000 RGB PNGs of grey content. The clinical readings are free text
written by hand: the first line is ``male 35yrs`` (also ``Male 35yrs``, ``male, 35yrs``,
``female 8month``, ``male 35 yrs``), the rest the reading (``normal`` or e.g. ``STB,ATB in left
upper field``). The label is the file-name suffix; the readings are parsed tolerantly (sex, age in
years, reading; None where absent) and never override it.

mtpret uses every image for contrastive pretraining only (its Table I lists 661, one fewer than
the release; which one is not said): ``split="train"``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import find_dataset_dir, finish_table, one_split_or_random, resolve_path

NAME = "shenzhen"
CLASSES = ("normal", "tuberculosis")
SET_DIR = "ChinaSet_AllFiles"
IMAGE_DIR = "CXR_png"
READINGS_DIR = "ClinicalReadings"
NAME_RE = re.compile(r"^CHNCXR_(\d+)_([01])\.png$", re.IGNORECASE)
REAL_COUNTS = {"normal": 326, "tuberculosis": 336}
TB_READINGS = ("PTB in the right upper field", "STB,ATB in left upper field",
               "bilateral secondary PTB with right pleural thickening", "1.PTB 2.left pleurisy",
               "STB in the left upper field, calcified")
_SEX_AGE = re.compile(r"^\s*(male|female|m|f)\b[\s,:]*(?:(\d+(?:\.\d+)?)\s*(yrs?|years?|y|months?|"
                      r"mon|m|days?|d)?)?", re.IGNORECASE)


def parse_reading(text: str) -> dict:
    """Sex (``M``/``F``), age in years and the reading of a ClinicalReadings text; tolerant of
    the real files' spellings, None for whatever is absent."""
    out = {"sex": None, "age": None, "reading": None}
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    if lines and (m := _SEX_AGE.match(lines[0])):
        out["sex"] = m.group(1)[0].upper()
        if m.group(2) is not None:
            unit = (m.group(3) or "y").lower()
            age = float(m.group(2))
            out["age"] = age / 12 if unit.startswith("m") else age / 365 if unit.startswith("d") else age
        rest = lines[0][m.end():].strip(" ,;:")
        lines = ([rest] if rest else []) + lines[1:]
    out["reading"] = " ".join(lines) or None
    return out


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The images :func:`write_phantom` writes: dicts with ``name``, ``label``, renderer
    ``seed`` and ``findings``, ``sex``, ``age`` and the reading's first line ``header`` (in one
    of the real files' spellings). Deterministic."""
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(np.arange(1, max(700, 3 * n) + 1), size=n, replace=False))
    n_tb = int(round(n * REAL_COUNTS["tuberculosis"] / sum(REAL_COUNTS.values())))
    if n >= 2:
        n_tb = min(max(n_tb, 1), n - 1)
    labels = rng.permutation(np.r_[np.zeros(n - n_tb, int), np.ones(n_tb, int)])
    plan = []
    for num, label in zip(numbers, labels):
        sex = str(rng.choice(["male", "female"]))
        months = bool(rng.random() < 0.05)
        age = int(rng.integers(2, 11)) if months else int(rng.integers(10, 80))
        spelling = int(rng.integers(3))
        sex_word = sex.capitalize() if spelling == 1 else sex
        unit = "month" if months else "yrs"
        header = f"{sex_word}{',' if spelling == 2 else ''} {age}{unit}"
        plan.append(dict(name=f"CHNCXR_{int(num):04d}_{int(label)}.png", label=int(label),
                         seed=int(rng.integers(2**31)), sex=sex[0].upper(),
                         age=age / 12 if months else float(age), header=header,
                         findings=(str(rng.choice(["TB_Active", "TB_Latent"])),) if label else (),
                         reading=str(rng.choice(TB_READINGS)) if label else "normal"))
    return plan


def _render_one(job):
    set_dir, item, size = job
    img = phantom.render_chest(item["seed"], size, item["findings"]).image
    write_image(Path(set_dir) / IMAGE_DIR / item["name"], img, rgb=True)
    write_text(Path(set_dir) / READINGS_DIR / item["name"].replace(".png", ".txt"),
               f"{item['header']}\n{item['reading']}\n")
    return item["name"]


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom Shenzhen set under ``out/ChinaSet_AllFiles`` (returns
    ``out``): RGB PNGs of grey content; TB images render ``TB_Active`` or ``TB_Latent`` with the
    real TB share (336/662)."""
    out = Path(out)
    set_dir = out / SET_DIR
    jobs = [(str(set_dir), item, size) for item in phantom_plan(n, size, seed)]
    parallel_map(_render_one, jobs, workers, desc="shenzhen phantom", progress=progress)
    return out


# ----------------------------------------------------------------------------- reader

def load_table(root, split: str = "train", fractions=(0.7, 0.1, 0.2), seed: int = 0) -> pd.DataFrame:
    """Read the Shenzhen set under ``root`` (the folder holding ChinaSet_AllFiles, or that folder).

    Columns: ``path``, ``split``, ``patient_id`` (the 4-digit number), ``label`` (0 normal, 1
    tuberculosis, from the ``_0``/``_1`` suffix), ``image`` (file name) and ``sex``, ``age``
    (years), ``reading`` from ClinicalReadings when present.

    ``split="train"`` (default): every row is train (mtpret pretrains on all of it); ``"test"``:
    every row is test; ``"random"``: a seeded split with ``fractions``. PNGs not named
    ``CHNCXR_####_0|1.png`` are skipped with a warning.
    """
    set_dir = find_dataset_dir(root, SET_DIR, marker=IMAGE_DIR)
    img_dir = set_dir / IMAGE_DIR
    if not img_dir.is_dir():
        raise DataError(f"shenzhen: missing image folder {img_dir}")
    files = sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() == ".png")
    odd = [f for f in files if not NAME_RE.match(f)]
    if odd:
        warnings.warn(f"{img_dir}: {len(odd)} PNG(s) not named CHNCXR_####_0|1.png skipped, "
                      f"e.g. {odd[:5]}", stacklevel=2)
    names = [f for f in files if NAME_RE.match(f)]
    if not names:
        raise DataError(f"shenzhen: {img_dir} has no images named CHNCXR_####_0.png / _1.png")
    rows = []
    for name in names:
        m = NAME_RE.match(name)
        row = dict(path=str(resolve_path(img_dir / name)), patient_id=int(m.group(1)),
                   label=int(m.group(2)), image=name)
        txt = set_dir / READINGS_DIR / (Path(name).stem + ".txt")
        text = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else ""
        row.update(parse_reading(text))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df["patient_id"].duplicated().any():
        dup = df.loc[df["patient_id"].duplicated(keep=False), "image"].tolist()
        raise DataError(f"shenzhen: {img_dir}: one number with two labels: {dup[:6]}")
    df = one_split_or_random(df, split, ("train", "test"), fractions, seed, NAME)
    return finish_table(df, dataset=NAME, root=set_dir.parent, classes=CLASSES)
