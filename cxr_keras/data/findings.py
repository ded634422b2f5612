"""Label harmonisation: every dataset's findings onto one vocabulary, NaN where a dataset does
not label a finding.

NIH writes ``Effusion`` and ``Pleural_Thickening``, CheXpert ``Pleural Effusion``, PediCXR
``Brocho-pneumonia``; multi-dataset training and cross-dataset evaluation (train on NIH, test on
CheXpert's overlapping findings) need one name per finding. The default :data:`VOCABULARY` is
torchxrayvision's ``default_pathologies`` (same names, same order), so that per-finding results
line up with that library's models and papers. :func:`harmonise` does for our tables what
torchxrayvision's ``relabel_dataset`` does for its datasets: columns in the vocabulary's order, a
finding the dataset does not label is all NaN, a finding outside the vocabulary is dropped.

The mapping tables (documented in docs/LABELS.md):

- :data:`MAPPINGS`: multi-label datasets, source column -> canonical finding, or ``None`` for a
  column with no counterpart (PediCXR's catch-all ``Other disease``), which is dropped. Several
  columns onto one finding (PediCXR's three pneumonia columns) are OR-ed (:func:`kleene_or`).
- :data:`CLASS_MAPPINGS`: multi-class datasets (an integer ``label`` with ``attrs["classes"]``),
  class name -> the findings that class is positive for; every other finding the table names
  for that dataset is 0 for it (Kermany ``normal`` is Pneumonia 0, No Finding 1).

Canonical names outside torchxrayvision's 18 (:data:`EXTRA_FINDINGS`: ``No Finding``,
``Tuberculosis`` as torchxrayvision's NLM-TB and TBX11K loaders spell it, CheXpert's ``Support
Devices`` and ``Pleural Other``, PediCXR's pediatric diseases) are reached by passing a larger
``vocabulary``. MURA (musculoskeletal) has no chest finding and is refused.

Example::

    from cxr_keras.data import harmonise, load_table
    chexpert = harmonise(load_table("chexpert", "/data"))   # "Pleural Effusion" -> "Effusion"
    chexpert.attrs["labels"]                                 # the 18 VOCABULARY names
    chexpert.attrs["harmonised"]["sources"]["Effusion"]      # ["Pleural Effusion"]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import DataError

# torchxrayvision's datasets.default_pathologies, in its order.
VOCABULARY = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
              "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
              "Mass", "Hernia", "Lung Lesion", "Fracture", "Lung Opacity",
              "Enlarged Cardiomediastinum")
# Canonical names the tables below produce besides VOCABULARY (reached with a larger vocabulary).
EXTRA_FINDINGS = ("No Finding", "Tuberculosis", "Support Devices", "Pleural Other", "Bronchitis",
                  "Bronchiolitis", "Situs Inversus", "Congenital Emphysema", "CPAM",
                  "Hyaline Membrane Disease", "Mediastinal Tumor")

_NIH = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
        "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
        "Hernia")

# Multi-label datasets: source column (the dataset's own spelling) -> canonical finding or None.
MAPPINGS = {
    # NIH's spellings are torchxrayvision's (its vocabulary starts from NIH's 14).
    "nih": {name: name for name in _NIH},
    "chexpert": {
        "No Finding": "No Finding", "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
        "Cardiomegaly": "Cardiomegaly", "Lung Opacity": "Lung Opacity", "Lung Lesion": "Lung Lesion",
        "Edema": "Edema", "Consolidation": "Consolidation", "Pneumonia": "Pneumonia",
        "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion",          # as torchxrayvision's CheX_Dataset renames it
        "Pleural Other": "Pleural Other",        # broader than pleural thickening: kept apart
        "Fracture": "Fracture", "Support Devices": "Support Devices",
    },
    "pedicxr": {
        "No finding": "No Finding", "Bronchitis": "Bronchitis",
        "Brocho-pneumonia": "Pneumonia", "Pleuro-pneumonia": "Pneumonia", "Pneumonia": "Pneumonia",
        "Other disease": None,                  # a catch-all of rare diseases: no counterpart
        "Bronchiolitis": "Bronchiolitis", "Situs inversus": "Situs Inversus",
        "Diagphramatic hernia": "Hernia", "Tuberculosis": "Tuberculosis",
        "Congenital emphysema": "Congenital Emphysema",  # lobar over-inflation, not COPD emphysema
        "CPAM": "CPAM", "Hyaline membrane disease": "Hyaline Membrane Disease",
        "Mediastinal tumor": "Mediastinal Tumor", "Lung tumor": "Lung Lesion",
    },
}
# Multi-class datasets: class name -> the findings it is positive for (0 for the others named).
CLASS_MAPPINGS = {
    "kermany": {"normal": ("No Finding",), "bacterial": ("Pneumonia",), "viral": ("Pneumonia",),
                "pneumonia": ("Pneumonia",)},
    "tbx11k": {"healthy": ("No Finding",), "sick_non_tb": (), "tb": ("Tuberculosis",)},
    "montgomery": {"normal": ("No Finding",), "tuberculosis": ("Tuberculosis",)},
    "lungmasks": {"normal": ("No Finding",), "tuberculosis": ("Tuberculosis",)},
}
REFUSED = {"mura": "MURA holds musculoskeletal radiographs (normal/abnormal), no chest finding"}
DATASETS = tuple(MAPPINGS) + tuple(CLASS_MAPPINGS)


def kleene_or(values) -> np.ndarray:
    """Row-wise OR of label columns (1.0 / 0.0 / NaN = not known) in three-valued logic: 1 where
    any column is 1, 0 where every column is 0, NaN otherwise (a 0 beside an unknown is not a
    known negative). ``values``: array ``(rows, columns)``."""
    v = np.asarray(values, np.float32)
    if v.ndim != 2 or v.shape[1] == 0:
        raise DataError(f"kleene_or needs a (rows, columns>0) array, got shape {v.shape}")
    out = np.full(len(v), np.nan, np.float32)
    out[(v == 0).all(axis=1)] = 0.0
    out[(v == 1).any(axis=1)] = 1.0
    return out


def _check_dataset(dataset) -> str:
    if dataset in REFUSED:
        raise DataError(f"harmonise: dataset {dataset!r} has no chest finding to map ({REFUSED[dataset]})")
    if dataset not in DATASETS:
        raise DataError(f"harmonise: no label mapping for dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return dataset


def canonical_names(dataset: str, columns) -> dict:
    """``{column: canonical finding or None}`` for label ``columns`` of ``dataset``'s table (a
    multi-label dataset: a model's outputs named as the columns it was trained on). Raises a
    DataError naming every column the dataset's table does not map."""
    table = MAPPINGS.get(_check_dataset(dataset))
    if table is None:
        raise DataError(f"harmonise: {dataset!r} is multi-class (an integer label); its findings "
                        f"come from class names: {CLASS_MAPPINGS[dataset]}")
    unknown = [c for c in columns if c not in table]
    if unknown:
        raise DataError(f"harmonise: {dataset} has no mapping for column(s) {unknown}; its mapped "
                        f"columns: {list(table)}")
    return {c: table[c] for c in columns}


def _check_vocabulary(vocabulary) -> tuple:
    if isinstance(vocabulary, str):
        raise DataError(f"harmonise: vocabulary must be a sequence of finding names, got the "
                        f"string {vocabulary!r}")
    vocabulary = tuple(vocabulary)
    known = VOCABULARY + EXTRA_FINDINGS
    unknown = [v for v in vocabulary if v not in known]
    repeated = sorted({v for v in vocabulary if vocabulary.count(v) > 1})
    if unknown or repeated or not vocabulary:
        raise DataError(f"harmonise: bad vocabulary: unknown finding(s) {unknown}, repeated "
                        f"{repeated}{', empty' if not vocabulary else ''}; known: {list(known)}")
    return vocabulary


def _sources(df: pd.DataFrame, dataset: str) -> tuple[list, list]:
    """``([(source, canonical or None, values), ...], columns to remove)``: one entry per source
    column of a multi-label table, per finding of a multi-class one (source ``"label"``)."""
    attrs = df.attrs
    if attrs.get("harmonised"):  # already harmonised: its own columns, by identity
        labels = list(attrs.get("labels") or [])
        return [(c, c, df[c].to_numpy(np.float32)) for c in labels], labels
    if dataset in MAPPINGS:
        labels = attrs.get("labels")
        if labels is None:
            raise DataError(f"harmonise: the {dataset} table has no attrs['labels'] (a table from "
                            f"cxr_keras.data.load_table has them); cannot tell its label columns")
        absent = [c for c in labels if c not in df.columns]
        if absent:
            raise DataError(f"harmonise: attrs['labels'] names column(s) {absent} that the "
                            f"{dataset} table lacks")
        names = canonical_names(dataset, labels)
        return [(c, names[c], df[c].to_numpy(np.float32)) for c in labels], list(labels)
    table = CLASS_MAPPINGS[dataset]
    classes = attrs.get("classes")
    if classes is None or "label" not in df.columns:
        raise DataError(f"harmonise: the {dataset} table has no integer 'label' column with "
                        f"attrs['classes'] (a table from cxr_keras.data.load_table has them)")
    unknown = [c for c in classes if c not in table]
    if unknown:
        raise DataError(f"harmonise: {dataset} has no mapping for class(es) {unknown}; mapped "
                        f"classes: {list(table)}")
    label = df["label"].to_numpy()
    bad = sorted(set(label.tolist()) - set(range(len(classes))))
    if bad:
        raise DataError(f"harmonise: {dataset} 'label' holds value(s) {bad[:5]} outside "
                        f"0..{len(classes) - 1} (classes {list(classes)})")
    findings = dict.fromkeys(f for c in classes for f in table[c])
    positive = {f: np.array([f in table[c] for c in classes]) for f in findings}
    return [("label", f, positive[f][label].astype(np.float32)) for f in findings], ["label"]


def harmonise(df: pd.DataFrame, vocabulary=VOCABULARY, dataset: str | None = None) -> pd.DataFrame:
    """``df`` (a table from :func:`cxr_keras.data.load_table`) with its labels on ``vocabulary``.

    Args:
        df: the reader's table; its dataset is ``df.attrs["dataset"]`` unless ``dataset`` is given.
            Multi-label tables map their ``attrs["labels"]`` columns (:data:`MAPPINGS`),
            multi-class ones their ``label`` through ``attrs["classes"]`` (:data:`CLASS_MAPPINGS`).
            A harmonised table maps by identity (to reorder or narrow its vocabulary).
        vocabulary: the canonical findings, in the output's order (default torchxrayvision's 18).

    Returns a new table with the same rows and non-label columns; the source label columns (or
    ``label``) are replaced by one float32 column per vocabulary finding: the source column's
    values, the three-valued OR (:func:`kleene_or`) of several, or all NaN where the dataset does
    not label the finding. ``attrs["labels"]`` is the vocabulary; ``attrs["classes"]`` is
    removed; ``attrs["harmonised"]`` records ``vocabulary``, ``sources`` (finding -> source
    columns, only findings the dataset labels) and ``dropped`` (source columns with no finding in
    the vocabulary, dropped as torchxrayvision's ``relabel_dataset`` drops them). Unknown
    datasets, columns, classes or vocabulary names raise a DataError naming them.

    Example::

        nih = harmonise(load_table("nih", root), vocabulary=("Effusion", "Lung Opacity"))
        nih["Lung Opacity"].isna().all()   # True: NIH does not label it
    """
    dataset = dataset if dataset is not None else df.attrs.get("dataset")
    if dataset is None:
        raise DataError("harmonise: the table has no attrs['dataset']; pass dataset=")
    vocabulary = _check_vocabulary(vocabulary)
    entries, remove = _sources(df, _check_dataset(dataset))
    clash = [v for v in vocabulary if v in df.columns and v not in remove]
    if clash:
        raise DataError(f"harmonise: the {dataset} table already has non-label column(s) {clash}")
    columns = {}
    for v in vocabulary:
        values = [x for _, canon, x in entries if canon == v]
        columns[v] = (kleene_or(np.stack(values, axis=1)) if values
                      else np.full(len(df), np.nan, np.float32))
    sources = {v: [s for s, canon, _ in entries if canon == v] for v in vocabulary}
    sources = {v: s for v, s in sources.items() if s}
    if df.attrs.get("harmonised"):  # keep naming the original columns
        sources = {v: list(df.attrs["harmonised"]["sources"][v]) for v in sources
                   if v in df.attrs["harmonised"]["sources"]}
    used = {s for s, canon, _ in entries if canon in vocabulary}
    dropped = sorted({s for s, _, _ in entries} - used)
    rest = df.drop(columns=remove)
    front = [c for c in ("path", "split", "patient_id") if c in rest.columns]
    out = pd.concat([rest[front], pd.DataFrame(columns, index=df.index), rest.drop(columns=front)],
                    axis=1)
    out.attrs = {k: v for k, v in df.attrs.items() if k != "classes"}
    out.attrs.update(labels=list(vocabulary), dataset=dataset,
                     harmonised={"vocabulary": list(vocabulary), "sources": sources,
                                 "dropped": dropped})
    return out


__all__ = ["VOCABULARY", "EXTRA_FINDINGS", "MAPPINGS", "CLASS_MAPPINGS", "DATASETS", "harmonise",
           "canonical_names", "kleene_or"]
