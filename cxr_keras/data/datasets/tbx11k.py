"""TBX11K (tuberculosis X-rays with TB boxes): phantom writer and reader for the official layout.

Layout (``root`` is the folder holding ``TBX11K``)::

    TBX11K/imgs/health/h0001.png ...   3,800 healthy          512x512 RGB PNG of grey content
    TBX11K/imgs/sick/s0001.png ...     3,800 sick but not TB
    TBX11K/imgs/tb/tb0001.png ...        800 TB (boxes in the JSON)
    TBX11K/imgs/test/...               2,800 unlabelled test images (labels withheld)
    TBX11K/imgs/extra/...              extra public TB sets, listed in all_test.txt only
    TBX11K/annotations/json/TBX11K_train.json, TBX11K_val.json (COCO: images, annotations,
        categories), TBX11K_trainval.json, all_*.json; annotations/xml/ (VOC, not read)
    TBX11K/lists/TBX11K_train.txt (6,600), TBX11K_val.txt (1,800), TBX11K_trainval.txt,
        all_train.txt, all_val.txt, all_trainval.txt, all_test.txt (3,302 = test + extra)

List lines and JSON ``file_name`` are relative to ``imgs/`` (``tb/tb0003.png``). COCO categories:
1 ``ActiveTuberculosis``, 2 ``ObsoletePulmonaryTuberculosis`` (latent TB), and 3
``PulmonaryTuberculosis`` (uncertain TB), which the released annotations do not use (1,211
boxes: 902 train, 309 val). One tb image (tb1199) has no box; 30 tb images have both kinds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...io import DataError, write_json, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import find_dataset_dir, finish_table, path_under, read_list, resolve_path, split_by_fractions

NAME = "tbx11k"
DIR = "TBX11K"
CLASSES = ("healthy", "sick_non_tb", "tb")
FOLDER_CLASS = {"health": 0, "sick": 1, "tb": 2}
FOLDER_PREFIX = {"health": "h", "sick": "s", "tb": "tb", "test": "test"}
BOX_CLASSES = ("ActiveTuberculosis", "ObsoletePulmonaryTuberculosis")  # class_index 0 active, 1 latent
UNCERTAIN = "PulmonaryTuberculosis"
CATEGORIES = [{"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
              {"id": 2, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
              {"id": 3, "name": UNCERTAIN, "supercategory": "Tuberculosis"}]
FINDING_CATEGORY = {"TB_Active": 1, "TB_Latent": 2}
SICK_FINDINGS = ("Pneumonia", "Infiltration", "Effusion", "Atelectasis", "Consolidation", "Mass",
                 "Nodule", "Fibrosis", "Pleural_Thickening")
REAL_COUNTS = {"health": 3800, "sick": 3800, "tb": 800, "test": 2800, "extra": 502}
VAL_FRACTION = {"health": 800 / 3800, "sick": 800 / 3800, "tb": 200 / 800}
TB_KINDS = {("TB_Active",): 630, ("TB_Latent",): 139, ("TB_Active", "TB_Latent"): 30}


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The ``n`` images :func:`write_phantom` writes: dicts with ``rel`` (relative to imgs/),
    ``folder``, ``list`` (TBX11K_train / TBX11K_val / all_test), renderer ``seed`` and
    ``findings``. Deterministic. A quarter are unlabelled test images (2,800/11,200); the TB
    share of the labelled ones is the real 800/8,400 but at least min(6, a third) so that small
    phantoms have detection positives."""
    rng = np.random.default_rng(seed)
    n_test = int(round(n * REAL_COUNTS["test"] / 11200))
    n_tv = n - n_test
    n_tb = max(int(round(n_tv * 800 / 8400)), min(6, n_tv // 3))
    n_health = (n_tv - n_tb + 1) // 2
    counts = {"health": n_health, "sick": n_tv - n_tb - n_health, "tb": n_tb, "test": n_test}
    kinds, kind_p = list(TB_KINDS), np.array(list(TB_KINDS.values()), float)
    plan = []
    for folder, count in counts.items():
        n_val = int(round(count * VAL_FRACTION.get(folder, 0.0)))
        if folder != "test" and count >= 2:
            n_val = min(max(n_val, 1), count - 1)
        val_idx = set(rng.permutation(count)[:n_val].tolist())
        for k in range(count):
            if folder == "tb":
                findings = kinds[int(rng.choice(len(kinds), p=kind_p / kind_p.sum()))]
            elif folder == "sick":
                findings = tuple(sorted(rng.choice(SICK_FINDINGS, size=int(rng.integers(1, 3)),
                                                   replace=False), key=SICK_FINDINGS.index))
            else:
                findings = ()
            lst = "all_test" if folder == "test" else ("TBX11K_val" if k in val_idx else "TBX11K_train")
            plan.append(dict(rel=f"{folder}/{FOLDER_PREFIX[folder]}{k + 1:04d}.png", folder=folder,
                             list=lst, seed=int(rng.integers(2**31)), findings=tuple(findings)))
    return plan


def _render_one(job):
    imgs, item, size = job
    ph = phantom.render_chest(item["seed"], size, item["findings"])
    write_image(Path(imgs) / item["rel"], ph.image, rgb=True)
    return [(f, float(x), float(y), float(w), float(h)) for (f, x, y, w, h) in ph.boxes
            if f in FINDING_CATEGORY]


def _coco(items, boxes, size) -> dict:
    images, annotations = [], []
    for item, bxs in zip(items, boxes):
        images.append({"id": item["id"], "file_name": item["rel"], "width": size, "height": size})
        for f, x, y, w, h in bxs:
            annotations.append({"id": len(annotations) + 1, "image_id": item["id"],
                                "category_id": FINDING_CATEGORY[f], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "segmentation": []})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True) -> Path:
    """Write an ``n``-image phantom TBX11K under ``out/TBX11K`` (returns ``out``).

    health: no finding; sick: one or two non-TB findings; tb: ``TB_Active`` / ``TB_Latent`` /
    both in the real 630/139/30 proportions, with the renderer's TB boxes as COCO annotations
    (category 1 active, 2 latent). All images RGB PNG of grey content, ``size`` square (the
    real set is 512x512). No ``imgs/extra``.
    """
    out = Path(out)
    base = out / DIR
    plan = phantom_plan(n, size, seed)
    for i, item in enumerate(plan, start=1):
        item["id"] = i
    boxes = parallel_map(_render_one, [(str(base / "imgs"), it, size) for it in plan], workers,
                         desc="tbx11k phantom", progress=progress)
    by_list = {"TBX11K_train": [], "TBX11K_val": [], "all_test": []}
    for item, bxs in zip(plan, boxes):
        by_list[item["list"]].append((item, bxs))
    by_list["TBX11K_trainval"] = by_list["TBX11K_train"] + by_list["TBX11K_val"]
    for name in ("TBX11K_train", "TBX11K_val", "TBX11K_trainval"):
        pairs = by_list[name]
        coco = _coco([p[0] for p in pairs], [p[1] for p in pairs], size)
        text = "".join(f"{p[0]['rel']}\n" for p in pairs)
        for prefix in ("TBX11K", "all"):  # no extra data in the phantom: all_* == TBX11K_*
            stem = name.replace("TBX11K", prefix)
            write_json(base / "annotations" / "json" / f"{stem}.json", coco)
            write_text(base / "lists" / f"{stem}.txt", text)
    write_text(base / "lists" / "all_test.txt", "".join(f"{p[0]['rel']}\n" for p in by_list["all_test"]))
    return out


# ----------------------------------------------------------------------------- reader

def _norm(rel: str) -> str:
    rel = str(rel).strip().replace("\\", "/")
    for prefix in ("./", "imgs/"):
        if rel.startswith(prefix):
            rel = rel[len(prefix):]
    return rel


def _field(obj, key, path, where, types=None):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where} has no field {key!r}")
    value = obj[key]
    if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise DataError(f"{path}: {where}: field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                        f"got {value!r}")
    return value


_ID = (int, str)  # COCO ids: numbers (strings tolerated); never lists, objects or booleans


def read_coco(path, uncertain: str = "drop") -> dict:
    """Parse a TBX11K COCO JSON into ``{file_name relative to imgs/: [[x, y, w, h, class_index],
    ...]}`` (every listed image, empty list when it has no box). class_index follows
    :data:`BOX_CLASSES`; boxes of the uncertain category ``PulmonaryTuberculosis`` are dropped
    (``uncertain="drop"``, with a warning), counted as latent (``"latent"``) or refused
    (``"error"``). Every malformed part is a DataError naming the file and the field."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing COCO annotation file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM is not JSON
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON: {e}") from e
    images = _field(data, "images", path, "the top level")
    annotations = _field(data, "annotations", path, "the top level")
    categories = _field(data, "categories", path, "the top level")
    for key, val in (("images", images), ("annotations", annotations), ("categories", categories)):
        if not isinstance(val, list):
            raise DataError(f"{path}: field {key!r} must be a list, got {type(val).__name__}")
    cat_index = {}
    for i, cat in enumerate(categories):
        cid = _field(cat, "id", path, f"categories[{i}]", _ID)
        name = _field(cat, "name", path, f"categories[{i}]", (str,))
        if name in BOX_CLASSES:
            cat_index[cid] = BOX_CLASSES.index(name)
        elif name == UNCERTAIN:
            cat_index[cid] = None
        else:
            cat_index[cid] = f"unknown category name {name!r}"
    by_id, out = {}, {}
    for i, im in enumerate(images):
        iid = _field(im, "id", path, f"images[{i}]", _ID)
        name = _norm(_field(im, "file_name", path, f"images[{i}]", (str,)))
        by_id[iid] = name
        out.setdefault(name, [])
    n_uncertain = 0
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        iid = _field(ann, "image_id", path, where, _ID)
        bbox = _field(ann, "bbox", path, where)
        cid = _field(ann, "category_id", path, where, _ID)
        if iid not in by_id:
            raise DataError(f"{path}: {where}: field 'image_id' = {iid!r} matches no entry of 'images'")
        if cid not in cat_index:
            raise DataError(f"{path}: {where}: field 'category_id' = {cid!r} matches no entry of 'categories'")
        if isinstance(cat_index[cid], str):
            raise DataError(f"{path}: field 'categories': {cat_index[cid]} (id {cid}) is used by {where}; "
                            f"known: {list(BOX_CLASSES) + [UNCERTAIN]}")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {where}: field 'bbox' must be 4 numbers [x, y, w, h], "
                            f"got {bbox!r}") from None
        if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
            raise DataError(f"{path}: {where}: field 'bbox' has a non-finite or non-positive size: {bbox!r}")
        cls = cat_index[cid]
        if cls is None:
            n_uncertain += 1
            if uncertain == "error":
                raise DataError(f"{path}: {where}: box of the uncertain category {UNCERTAIN!r} "
                                f"(uncertain='error')")
            if uncertain == "drop":
                continue
            cls = BOX_CLASSES.index("ObsoletePulmonaryTuberculosis")
        out[by_id[iid]].append([x, y, w, h, int(cls)])
    if n_uncertain and uncertain == "drop":
        warnings.warn(f"{path}: dropped {n_uncertain} box(es) of the uncertain category {UNCERTAIN!r}",
                      stacklevel=2)
    return out


def _annotation_file(base: Path, stem: str) -> Path:
    json_dir = base / "annotations" / "json"
    path = json_dir / f"TBX11K_{stem}.json"
    if not path.exists() and (json_dir / f"all_{stem}.json").exists():
        return json_dir / f"all_{stem}.json"
    return path


def load_table(root, subset: str = "all", split: str = "official", test_fraction: float = 0.5,
               fractions=(0.8, 0.1, 0.1), seed: int = 0, uncertain: str = "drop",
               missing: str = "error") -> pd.DataFrame:
    """Read TBX11K under ``root`` (the folder holding TBX11K, or TBX11K itself).

    Rows: the images of lists/TBX11K_train.txt and TBX11K_val.txt (the official test set has no
    public labels and imgs/extra is listed in all_test.txt only: neither is returned).
    Columns: ``path``, ``split``, ``label`` (0 healthy, 1 sick but not TB, 2 TB, from the image
    folder), ``boxes`` (list of ``[x, y, w, h, class_index]`` in original pixels from the COCO
    JSON of the image's list; ``df.attrs["box_classes"]`` = ActiveTuberculosis,
    ObsoletePulmonaryTuberculosis), ``image`` (relative to imgs/), ``official_split``.

    ``subset="all"`` (default) or ``"tb"``: only tb images with at least one box (the detection
    task; tb1199, with no box, is left out). ``split="official"``: TBX11K_train is train and the
    official val is split, seeded and stratified by label, into val and test (``test_fraction``,
    default half), since the official test labels are withheld. ``split="random"``: seeded
    ``fractions`` over the selected rows; ``subset="tb", split="random"`` with the default 80/10/10
    gives mtpret's 640/80/80 detection split (639/80/80 on the real data, one tb image having no
    box). ``uncertain`` handles boxes of category ``PulmonaryTuberculosis``: ``"drop"``,
    ``"latent"`` or ``"error"``. ``missing="drop"`` drops rows whose PNG is absent.
    """
    if subset not in ("all", "tb"):
        raise DataError(f"tbx11k: subset must be 'all' or 'tb', got {subset!r}")
    if uncertain not in ("drop", "latent", "error"):
        raise DataError(f"tbx11k: uncertain must be 'drop', 'latent' or 'error', got {uncertain!r}")
    if missing not in ("error", "drop"):
        raise DataError(f"tbx11k: missing must be 'error' or 'drop', got {missing!r}")
    base = find_dataset_dir(root, DIR, marker="lists").resolve()
    rows = []
    for stem in ("train", "val"):
        list_path = base / "lists" / f"TBX11K_{stem}.txt"
        names = read_list(list_path)
        ann_path = _annotation_file(base, stem)
        boxes = read_coco(ann_path, uncertain=uncertain)
        by_base = {k.rsplit("/", 1)[-1]: v for k, v in boxes.items()}  # copies with bare file_name
        absent_tb = []
        for line, entry in enumerate(names, start=1):
            rel = _norm(entry.split()[0])
            folder = rel.split("/")[0]
            if folder not in FOLDER_CLASS:
                raise DataError(f"{list_path}: line {line}: {rel!r} is not under "
                                f"{'/, '.join(FOLDER_CLASS)}/")
            bxs = boxes.get(rel, by_base.get(rel.rsplit("/", 1)[-1]))
            if bxs is None:
                bxs = []
                if folder == "tb":
                    absent_tb.append(rel)
            if bxs and folder != "tb":
                raise DataError(f"{ann_path}: field 'annotations': image {rel} of folder {folder!r} "
                                f"has {len(bxs)} TB box(es)")
            full = resolve_path(path_under(base / "imgs", rel, f"{list_path}: line {line}"))
            rows.append(dict(path=str(full), label=FOLDER_CLASS[folder], boxes=bxs,
                             image=rel, official_split=stem))
        if absent_tb:
            warnings.warn(f"{ann_path}: {len(absent_tb)} tb image(s) of {list_path.name} are not in its "
                          f"'images' (so they have no box), e.g. {absent_tb[:5]}", stacklevel=2)
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"{base / 'lists'}: TBX11K_train.txt and TBX11K_val.txt list no image")
    exists = np.array([Path(p).exists() for p in df["path"]])
    if not exists.all():
        if missing == "error":
            raise DataError(f"{base / 'imgs'}: {int((~exists).sum())} listed image(s) are missing, "
                            f"e.g. {df.loc[~exists, 'path'].head(5).tolist()}")
        df = df.loc[exists].reset_index(drop=True)
    if subset == "tb":
        df = df.loc[(df["label"] == FOLDER_CLASS["tb"]) & (df["boxes"].map(len) > 0)].reset_index(drop=True)
    if split == "official":
        if not 0.0 <= test_fraction <= 1.0:
            raise DataError(f"tbx11k: test_fraction must be in [0, 1], got {test_fraction}")
        df["split"] = np.where(df["official_split"] == "train", "train", "val")
        rng = np.random.default_rng(seed)
        for label in sorted(df["label"].unique()):
            idx = np.flatnonzero(((df["split"] == "val") & (df["label"] == label)).to_numpy())
            chosen = rng.permutation(idx)[:int(round(test_fraction * len(idx)))]
            df.iloc[chosen, df.columns.get_loc("split")] = "test"
    elif split == "random":
        df = split_by_fractions(df, fractions, seed, by="image")
    else:
        raise DataError(f"tbx11k: split must be 'official' or 'random', got {split!r}")
    return finish_table(df, dataset=NAME, root=base.parent, classes=CLASSES, box_classes=BOX_CLASSES)
