"""Indiana University chest X-ray collection (Open-i, "IU X-ray"): phantom writer and reader for
the two layouts users download.

NLM (Open-i) layout; ``root`` holds what the two archives extract to::

    NLMCXR_png/CXR1_1_IM-0001-3001.png ...      7,470 PNGs (NLMCXR_png.tgz; some copies extract
                                                them straight into root)
    ecgen-radiology/1.xml ...                   3,955 reports (NLMCXR_reports.tgz; also found
                                                under NLMCXR_reports/ecgen-radiology/)

Each report lists its images as ``<parentImage id="CXR1_1_IM-0001-3001">`` (some ids have no
middle number: ``CXR10_IM-0002-1001``), its MeSH terms as ``<MeSH><major>normal</major>
<automatic>...</automatic></MeSH>`` (major terms such as ``Cardiomegaly/borderline`` or
``Lung/hypoinflation/mild``, sometimes with stray whitespace) and its text as
``<AbstractText Label="FINDINGS">`` / ``"IMPRESSION"`` / ``"INDICATION"`` / ``"COMPARISON"`` (any
may be absent or empty). The report number is ``<uId id="CXR1">``, else the file name.

Kaggle re-packing (raddar/chest-xrays-indiana-university)::

    images/images_normalized/1_IM-0001-4001.dcm.png ...   7,466 PNGs
    indiana_reports.csv      uid,MeSH,Problems,image,indication,comparison,findings,impression
                             (3,851 rows; MeSH and Problems ';'-separated; quoted free text)
    indiana_projections.csv  uid,filename,projection   (projection Frontal / Lateral)

Table (both layouts): one row per image; ``path``, ``split``, ``patient_id`` (the report number:
one study per report), ``uid``, ``image``, ``projection`` (Frontal / Lateral in the Kaggle copy,
None in the NLM one, which does not say), ``mesh`` (the major MeSH terms, ';'-joined as in the
Kaggle CSV), ``problems`` (their heads, before the first '/'), ``findings``, ``impression``,
``indication``, ``comparison`` and ``normal`` (1.0 where the only MeSH term is ``normal``, 0.0
otherwise, NaN for an image without a report). No image-level label exists; mtpret uses every
image for contrastive pretraining only (``split="train"``, the default).

Strictness: an unreadable XML report, a CSV without its columns, a uid that is not an integer,
a projection other than Frontal / Lateral, a duplicate uid or file name raises a DataError naming
the file, row and column. Reports that list absent images are counted in
``df.attrs["images_not_found"]`` (the reports and image archives are released separately); an
image without a report keeps empty report columns.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ...io import DataError, write_text
from ...progress import parallel_map
from .. import phantom
from ..images import write_image
from ..tables import check_files_exist, finish_table, one_split_or_random, read_csv_checked, resolve_path

NAME = "indiana"
PNG_DIR = "NLMCXR_png"
XML_DIRS = ("ecgen-radiology", "NLMCXR_reports/ecgen-radiology")
KAGGLE_DIR = "images/images_normalized"
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
REPORT_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                  "impression")
PROJECTIONS = ("Frontal", "Lateral")
NLM_NAME = re.compile(r"^CXR(\d+)(?:_\d+)?_IM-\d+-\d+$", re.IGNORECASE)
KAGGLE_NAME = re.compile(r"^(\d+)_IM-\d+-\d+\.dcm\.png$", re.IGNORECASE)
TEXT_FIELDS = ("findings", "impression", "indication", "comparison")
REAL_COUNTS = {"nlm_images": 7470, "nlm_reports": 3955, "kaggle_images": 7466, "kaggle_reports": 3851}
# phantom findings and the MeSH major term a report gives them
MESH = {"Cardiomegaly": "Cardiomegaly/mild", "Effusion": "Pleural Effusion/right",
        "Atelectasis": "Pulmonary Atelectasis/base/left", "Nodule": "Nodule/lung/upper lobe/right",
        "Emphysema": "Pulmonary Emphysema", "Consolidation": "Consolidation/lung/base",
        "Fibrosis": "Cicatrix/lung/apex"}


def _mesh_columns(terms) -> dict:
    terms = [t for t in terms if t]
    return dict(mesh=";".join(terms) or None,
                problems=";".join(t.split("/")[0].strip() for t in terms) or None,
                normal=float(bool(terms) and all(t.lower() == "normal" for t in terms)))


# ----------------------------------------------------------------------------- NLM XML reports

def parse_report(path) -> dict:
    """One ecgen-radiology XML report: ``uid`` (int), ``images`` (parentImage ids), ``mesh``,
    ``problems``, ``normal`` and the four text sections (None where absent or empty)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"indiana: cannot parse XML report {path}: {e}") from e
    uid_el = root.find(".//uId")
    text = uid_el.get("id", "") if uid_el is not None else ""
    m = re.fullmatch(r"\s*(?:CXR)?(\d+)\s*", text or path.stem, re.IGNORECASE)
    if m is None:
        m = re.fullmatch(r"(\d+)", path.stem)
    if m is None:
        raise DataError(f"indiana: {path}: <uId id={text!r}> is not CXR<number> and the file name "
                        "is not <number>.xml")
    out = {"uid": int(m.group(1)),
           "images": [p.get("id", "").strip() for p in root.iter("parentImage") if p.get("id")]}
    out.update(_mesh_columns(" ".join((e.text or "").split()) for e in root.iter("major")))
    for field in TEXT_FIELDS:
        out[field] = None
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().lower()
        if label in TEXT_FIELDS:
            out[label] = " ".join("".join(el.itertext()).split()) or None
    return out


def _nlm_table(root: Path) -> pd.DataFrame:
    png_dir = root / PNG_DIR if (root / PNG_DIR).is_dir() else root
    pngs = {p.stem: p for p in sorted(png_dir.glob("*.png"))}
    if not pngs:
        raise DataError(f"indiana: no PNG images in {root / PNG_DIR} or {root}")
    xml_dir = next((root / d for d in XML_DIRS if (root / d).is_dir()), None)
    reports, by_image, not_found = {}, {}, []
    for xml in sorted(xml_dir.glob("*.xml")) if xml_dir is not None else []:
        rep = parse_report(xml)
        if rep["uid"] in reports:
            raise DataError(f"indiana: report number {rep['uid']} in two files: "
                            f"{reports[rep['uid']]['file']} and {xml}")
        rep["file"] = xml
        reports[rep["uid"]] = rep
        for image_id in rep["images"]:
            by_image[image_id] = rep["uid"]
            if image_id not in pngs:
                not_found.append(image_id)
    rows, odd = [], []
    for stem, p in pngs.items():
        uid = by_image.get(stem)
        if uid is None:
            m = NLM_NAME.match(stem)
            if m is None:
                odd.append(p.name)
                continue
            uid = int(m.group(1))
        rep = reports.get(uid, {})
        row = dict(path=str(resolve_path(p)), patient_id=uid, uid=uid, image=p.name, projection=None)
        row.update({k: rep.get(k) for k in ("mesh", "problems", *TEXT_FIELDS)})
        row["normal"] = rep.get("normal", np.nan)
        rows.append(row)
    if odd:
        warnings.warn(f"{png_dir}: {len(odd)} PNG(s) neither listed in a report nor named "
                      f"CXR<n>_..._IM-####-####.png skipped, e.g. {odd[:5]}", stacklevel=3)
    if not rows:
        raise DataError(f"indiana: no image in {png_dir} is named CXR<n>_IM-... or listed in a report")
    df = pd.DataFrame(rows)
    df.attrs["images_not_found"] = len(not_found)
    df.attrs["reports"] = len(reports)
    return df


# ----------------------------------------------------------------------------- Kaggle CSVs

def _uid_column(df, path) -> list:
    out = []
    for i, v in enumerate(df["uid"]):
        text = str(v).strip()
        if not text.isdigit():
            raise DataError(f"{path}: row {i + 1} (after the header), column 'uid': {v!r} is not "
                            "an integer report number")
        out.append(int(text))
    return out


def _kaggle_table(root: Path, missing: str) -> pd.DataFrame:
    proj_path, rep_path = root / PROJECTIONS_CSV, root / REPORTS_CSV
    proj = read_csv_checked(proj_path, ("uid", "filename", "projection"), dtype=str,
                            keep_default_na=False, encoding="utf-8-sig")
    uids = _uid_column(proj, proj_path)
    bad = ~proj["projection"].str.strip().isin(PROJECTIONS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{proj_path}: line {i + 2}, column 'projection': "
                        f"{proj['projection'].iloc[i]!r} is not Frontal or Lateral "
                        f"({int(bad.sum())} bad value(s))")
    names = proj["filename"].str.strip()
    dup = names.duplicated(keep=False)
    if dup.any():
        raise DataError(f"{proj_path}: file name(s) listed twice: {sorted(set(names[dup]))[:5]}")
    reports = {}
    if rep_path.is_file():
        rep = read_csv_checked(rep_path, REPORT_COLUMNS, dtype=str, keep_default_na=False,
                               encoding="utf-8-sig")
        for i, (uid, (_, r)) in enumerate(zip(_uid_column(rep, rep_path), rep.iterrows())):
            if uid in reports:
                raise DataError(f"{rep_path}: row {i + 1} (after the header), column 'uid': "
                                f"report {uid} listed twice")
            terms = [" ".join(t.split()) for t in r["MeSH"].split(";")]
            entry = _mesh_columns(terms)
            entry["problems"] = r["Problems"].strip() or None
            entry.update({f: (" ".join(r[f].split()) or None) for f in TEXT_FIELDS})
            reports[uid] = entry
    img_dir = root / KAGGLE_DIR
    rows = []
    for uid, name, projection in zip(uids, names, proj["projection"].str.strip()):
        rep = reports.get(uid, {})
        row = dict(path=str(resolve_path(img_dir / name)), patient_id=uid, uid=uid, image=name,
                   projection=projection)
        row.update({k: rep.get(k) for k in ("mesh", "problems", *TEXT_FIELDS)})
        row["normal"] = rep.get("normal", np.nan)
        rows.append(row)
    if not rows:
        raise DataError(f"indiana: {proj_path} lists no image")
    df = check_files_exist(pd.DataFrame(rows), missing, img_dir, "image(s) listed in "
                           f"{PROJECTIONS_CSV}")
    df.attrs["reports"] = len(reports)
    df.attrs["images_not_found"] = 0
    return df


# ----------------------------------------------------------------------------- reader

def layout_of(root) -> str:
    """``"kaggle"`` where indiana_projections.csv exists, else ``"nlm"``."""
    return "kaggle" if (Path(root) / PROJECTIONS_CSV).is_file() else "nlm"


def load_table(root, layout: str = "auto", views: str = "all", split: str = "train",
               fractions=(0.7, 0.1, 0.2), seed: int = 0, missing: str = "error") -> pd.DataFrame:
    """Read the Indiana collection under ``root`` (see the module docstring for the columns).

    ``layout``: ``"nlm"``, ``"kaggle"`` or ``"auto"`` (:func:`layout_of`). ``views``: ``"all"``,
    ``"frontal"`` or ``"lateral"`` (Kaggle layout only: the NLM release does not label views).
    ``split="train"``: every image is train (mtpret); ``"random"``: seeded ``fractions`` by
    report. ``missing="drop"`` drops Kaggle rows whose PNG is absent instead of raising.
    """
    root = Path(root)
    if missing not in ("error", "drop"):
        raise DataError(f"indiana: missing must be 'error' or 'drop', got {missing!r}")
    layout = layout_of(root) if layout == "auto" else layout
    if layout not in ("nlm", "kaggle"):
        raise DataError(f"indiana: layout must be 'auto', 'nlm' or 'kaggle', got {layout!r}")
    if views not in ("all", "frontal", "lateral"):
        raise DataError(f"indiana: views must be 'all', 'frontal' or 'lateral', got {views!r}")
    if views != "all" and layout == "nlm":
        raise DataError("indiana: views='frontal'/'lateral' needs the Kaggle copy "
                        "(indiana_projections.csv); the NLM release does not label views")
    df = _kaggle_table(root, missing) if layout == "kaggle" else _nlm_table(root)
    attrs = dict(df.attrs)
    if views != "all":
        df = df[df["projection"] == views.capitalize()]
    df = one_split_or_random(df, split, ("train",), fractions, seed, NAME)
    df = finish_table(df, dataset=NAME, root=root)
    df.attrs.update(attrs, layout=layout)
    return df


# ----------------------------------------------------------------------------- phantom writer

def phantom_plan(n: int = 200, size: int = 256, seed: int = 0) -> list[dict]:
    """The reports :func:`write_phantom` writes: dicts with ``uid``, ``findings``, ``mesh``
    terms, ``impression`` and ``images`` (each ``(view, image number, renderer seed)``; most
    studies have a frontal and a lateral view). ``n`` images in all. Deterministic."""
    rng = np.random.default_rng(seed)
    plan, left, uid = [], n, 0
    while left > 0:
        uid += int(rng.integers(1, 4))
        k = min(left, int(rng.choice([1, 2, 2, 2, 3])))
        findings = () if rng.random() < 0.4 else tuple(sorted(
            set(rng.choice(list(MESH), size=int(rng.integers(1, 3))).tolist())))
        views = ["Frontal", "Lateral", "Frontal"][:k]
        plan.append(dict(uid=uid, findings=findings,
                         mesh=[MESH[f] for f in findings] or ["normal"],
                         impression=("No active disease." if not findings else
                                     f"{', '.join(findings)}."),
                         images=[(v, 1000 + 10 * uid + j, int(rng.integers(2**31)))
                                 for j, v in enumerate(views)]))
        left -= k
    return plan


def _view_image(seed, size, findings, view) -> np.ndarray:
    img = phantom.render_chest(seed, size, findings).image
    if view == "Lateral":  # a narrower, blurred picture: not a frontal view
        narrow = cv2.resize(img, (max(1, int(size * 0.6)), size), interpolation=cv2.INTER_AREA)
        img = np.zeros_like(img)
        x0 = (size - narrow.shape[1]) // 2
        img[:, x0:x0 + narrow.shape[1]] = cv2.GaussianBlur(narrow, (0, 0), max(0.5, size / 128))
    return img


def _render_one(job):
    path, seed, size, findings, view = job
    write_image(path, _view_image(seed, size, findings, view))
    return path


def _xml(rep, names) -> str:
    e = ET.Element("eCitation")
    ET.SubElement(e, "uId", id=f"CXR{rep['uid']}")
    abstract = ET.SubElement(ET.SubElement(ET.SubElement(e, "MedlineCitation"), "Article"),
                             "Abstract")
    for label, text in (("COMPARISON", "None."), ("INDICATION", "XXXX-year-old with cough."),
                        ("FINDINGS", "The heart, pulmonary XXXX and mediastinum are within normal "
                         "limits." if not rep["findings"] else rep["impression"]),
                        ("IMPRESSION", rep["impression"])):
        ET.SubElement(abstract, "AbstractText", Label=label).text = text
    mesh = ET.SubElement(e, "MeSH")
    for term in rep["mesh"]:
        ET.SubElement(mesh, "major").text = f"{term}  \n"  # stray whitespace, as the real files
    for name in names:
        ET.SubElement(ET.SubElement(e, "parentImage", id=name), "caption").text = "Xray Chest"
    return ET.tostring(e, encoding="unicode")


def write_phantom(out, n: int = 200, size: int = 256, seed: int = 0, workers=None,
                  progress: bool = True, layout: str = "nlm") -> Path:
    """Write an ``n``-image phantom under ``out`` (returns ``out``) in the NLM layout
    (``NLMCXR_png/`` and ``ecgen-radiology/*.xml``) or the Kaggle one (``layout="kaggle"``:
    ``images/images_normalized/`` and the two CSVs). Abnormal studies render their findings."""
    if layout not in ("nlm", "kaggle"):
        raise DataError(f"indiana: layout must be 'nlm' or 'kaggle', got {layout!r}")
    out = Path(out)
    jobs = []
    reports, projections = io.StringIO(), io.StringIO()
    rep_csv, proj_csv = csv.writer(reports, lineterminator="\n"), csv.writer(projections, lineterminator="\n")
    rep_csv.writerow(REPORT_COLUMNS)
    proj_csv.writerow(("uid", "filename", "projection"))
    for rep in phantom_plan(n, size, seed):
        names = []
        for j, (view, number, rseed) in enumerate(rep["images"]):
            code = f"IM-{rep['uid'] % 10000:04d}-{4 if view == 'Frontal' else 3}{number % 1000:03d}"
            if layout == "nlm":
                name = f"CXR{rep['uid']}_{1 + j // 2}_{code}"
                path = out / PNG_DIR / f"{name}.png"
            else:
                name = f"{rep['uid']}_{code}.dcm.png"
                path = out / KAGGLE_DIR / name
                proj_csv.writerow((rep["uid"], name, view))
            names.append(name)
            jobs.append((str(path), rseed, size, rep["findings"], view))
        if layout == "nlm":
            write_text(out / XML_DIRS[0] / f"{rep['uid']}.xml", _xml(rep, names))
        else:
            findings = ("The heart size is normal, lungs are clear." if not rep["findings"]
                        else f"{rep['impression']}\nOtherwise, no change.")  # quoted line break
            rep_csv.writerow((rep["uid"], ";".join(rep["mesh"]),
                              ";".join(t.split("/")[0] for t in rep["mesh"]),
                              "Xray Chest PA and Lateral", "Cough, fever.", "None.", findings,
                              rep["impression"]))
    parallel_map(_render_one, jobs, workers, desc="indiana phantom", progress=progress)
    if layout == "kaggle":
        write_text(out / REPORTS_CSV, reports.getvalue())
        write_text(out / PROJECTIONS_CSV, projections.getvalue())
    return out
