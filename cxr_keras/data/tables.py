"""Helpers shared by the dataset readers: checked CSV reading, split assignment, table finishing.

Every reader returns a :class:`pandas.DataFrame` with the columns

- ``path``: absolute path of the image file;
- ``split``: ``"train"``, ``"val"`` or ``"test"``;
- ``patient_id`` where the dataset has one;
- the label columns, named as in the dataset's own files and listed in ``df.attrs["labels"]``
  (multi-label: float 1.0 / 0.0 / NaN = ignore), or an integer ``label`` column with the class
  names in ``df.attrs["classes"]`` (multi-class);
- optionally mask columns (paths, OR-ed into one mask) listed in ``df.attrs["mask_columns"]`` and
  a ``boxes`` column (list of ``[x, y, w, h, class_index]`` in original pixels) with the box class
  names in ``df.attrs["box_classes"]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import DataError

SPLITS = ("train", "val", "test")


def require_file(path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise DataError naming it if it does not exist."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing {what}: {path}")
    return path


def read_csv_checked(path, required_columns=(), **kwargs) -> pd.DataFrame:
    """Read a CSV and check that ``required_columns`` are present; errors name the file."""
    path = require_file(path, "CSV file")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as e:  # pandas raises many types; the user needs the file name
        raise DataError(f"{path}: cannot parse CSV: {e}") from e
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found columns {list(df.columns)}")
    return df


def read_list(path) -> list[str]:
    """Read a one-name-per-line list; tolerates a missing trailing newline, blank lines, CRLF line
    ends and a UTF-8 byte-order mark (which ``str.strip`` would keep on the first name)."""
    path = require_file(path, "split list")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read split list {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_off_validation(df: pd.DataFrame, fraction: float, seed: int, by: str = "image",
                         pool: str = "train") -> pd.DataFrame:
    """Move a seeded ``fraction`` of the ``pool`` rows to ``val``, by image or by patient.

    ``by="image"`` draws rows at random (what fzlpr did; a patient can then sit on both sides);
    ``by="patient"`` draws whole patients so that no patient leaks into validation.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    if by not in ("image", "patient"):
        raise DataError(f"val_by must be 'image' or 'patient', got {by!r}")
    df = df.copy()
    idx = np.flatnonzero((df["split"] == pool).to_numpy())
    if fraction == 0.0 or len(idx) == 0:
        return df
    rng = np.random.default_rng(seed)
    if by == "image":
        n_val = int(round(fraction * len(idx)))
        chosen = rng.permutation(idx)[:n_val]
    else:
        if "patient_id" not in df.columns:
            raise DataError("val_by='patient' needs a patient_id column, which this dataset lacks")
        patients = np.array(sorted(df["patient_id"].iloc[idx].unique()))
        n_val = int(round(fraction * len(patients)))
        val_patients = set(rng.permutation(patients)[:n_val].tolist())
        chosen = idx[df["patient_id"].iloc[idx].isin(val_patients).to_numpy()]
    df.iloc[chosen, df.columns.get_loc("split")] = "val"
    return df


def split_by_fractions(df: pd.DataFrame, fractions=(0.7, 0.1, 0.2), seed: int = 0,
                       by: str = "patient") -> pd.DataFrame:
    """Assign train/val/test at random with the given fractions, grouping by patient if asked."""
    if abs(sum(fractions) - 1.0) > 1e-6 or len(fractions) != 3:
        raise DataError(f"split fractions must be three numbers summing to 1, got {fractions}")
    df = df.copy()
    rng = np.random.default_rng(seed)
    keys = df["patient_id"].to_numpy() if by == "patient" else np.arange(len(df))
    uniq = np.array(sorted(pd.unique(keys)))
    order = rng.permutation(uniq)
    cut1 = int(round(fractions[0] * len(order)))
    cut2 = int(round((fractions[0] + fractions[1]) * len(order)))
    where = {k: SPLITS[0] for k in order[:cut1]}
    where.update({k: SPLITS[1] for k in order[cut1:cut2]})
    where.update({k: SPLITS[2] for k in order[cut2:]})
    df["split"] = [where[k] for k in keys]
    return df


def one_split_or_random(df: pd.DataFrame, split: str, whole: tuple, fractions, seed: int,
                        dataset: str) -> pd.DataFrame:
    """A set without official splits: all of it as one of the ``whole`` splits, or
    ``split="random"``: patient-disjoint ``fractions`` (train, val, test)."""
    if split in whole:
        return df.assign(split=split)
    if split == "random":
        return split_by_fractions(df, fractions, seed, by="patient")
    raise DataError(f"{dataset}: split must be {', '.join(map(repr, whole))} or 'random', got {split!r}")


def path_under(root, rel, where) -> Path:
    """``root / rel`` for a path read from a metadata file (a CSV cell, a list line), refused with
    a DataError naming ``where`` (file, line, column) if it is absolute or its ``..`` lead out of
    ``root``. Symlinks are not followed here; :func:`finish_table` checks the resolved paths."""
    root = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(root, str(rel)))
    if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
        raise DataError(f"{where}: path {str(rel)!r} leads outside the dataset folder {root}; "
                        f"paths in the metadata files must stay inside it")
    return Path(full)


def resolve_path(path) -> Path:
    """``Path(path).resolve()``, with a symlink loop or an unreadable link as a DataError."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DataError(f"cannot resolve {path}: {e}") from None


def check_inside_root(df: pd.DataFrame, root, columns, dataset: str) -> None:
    """Refuse a table any of whose path ``columns`` (strings, or lists of strings; "" = none)
    lies outside ``root`` once normalised: a ``..`` a reader let through, or a symlink inside the
    dataset that the reader resolved to somewhere else. The error names the row and the file.
    ``CXR_ALLOW_LINKS_OUT=1`` accepts files reached through symlinks that lead out of ``root``
    (a dataset whose image folders are links onto another disk); ``..`` in a metadata file stays
    refused (:func:`path_under`)."""
    if os.environ.get("CXR_ALLOW_LINKS_OUT") == "1":
        return
    top = str(resolve_path(root)).rstrip(os.sep) + os.sep
    for col in columns:
        for i, value in enumerate(df[col]):
            for p in (value if isinstance(value, (list, tuple)) else [value]):
                if p and not os.path.normpath(os.path.abspath(p)).startswith(top):
                    raise DataError(f"{dataset}: row {i}, column {col!r}: {p} lies outside the "
                                    f"dataset folder {top.rstrip(os.sep)} (a '..' or absolute path "
                                    f"in a metadata file, or a symlink leading out); refused "
                                    "(for image folders linked onto another disk: CXR_ALLOW_LINKS_OUT=1)")


def finish_table(df: pd.DataFrame, *, dataset: str, root, labels=None, classes=None,
                 mask_columns=None, box_classes=None) -> pd.DataFrame:
    """Check the common columns, order them, and set ``df.attrs``. Returns a fresh index.
    Every path (``path``, ``paths``, the mask columns) must lie inside ``root``."""
    for col in ("path", "split"):
        if col not in df.columns:
            raise DataError(f"{dataset}: reader produced no {col!r} column")
    check_inside_root(df, root, ["path"] + [c for c in ["paths"] + list(mask_columns or ())
                                            if c in df.columns], dataset)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{dataset}: unknown split value(s) {bad}")
    front = ["path", "split"] + (["patient_id"] if "patient_id" in df.columns else [])
    df = df[front + [c for c in df.columns if c not in front]].reset_index(drop=True)
    df.attrs = {"dataset": dataset, "root": str(Path(root).resolve())}
    if labels is not None:
        df.attrs["labels"] = list(labels)
        for c in labels:
            df[c] = df[c].astype("float32")
    if classes is not None:
        df.attrs["classes"] = list(classes)
        df["label"] = df["label"].astype("int64")
    if mask_columns:
        df.attrs["mask_columns"] = list(mask_columns)
    if box_classes is not None:
        df.attrs["box_classes"] = list(box_classes)
    return df


def sources_for_training(table: pd.DataFrame, sources, val_fraction: float, seed: int,
                         by: str = "patient", where="") -> pd.DataFrame:
    """The rows of ``table`` from ``sources`` (its ``source`` column), all for training but a
    seeded ``val_fraction`` held out for validation (:func:`split_off_validation`), attributes
    kept; an error naming ``where`` when no row is from ``sources``."""
    keep = table["source"].isin(sources).to_numpy()
    if not keep.any():
        raise DataError(f"{where}: no image from {tuple(sources)}")
    attrs = dict(table.attrs)
    table = split_off_validation(table[keep].assign(split="train"), val_fraction, seed, by=by)
    table.attrs = attrs
    return table.reset_index(drop=True)


def only_split(split: str):
    """A function ``table -> its rows of split``, attributes kept (a cache of one split)."""
    def keep(table):
        attrs = dict(table.attrs)
        table = table.loc[table["split"] == split].reset_index(drop=True)
        table.attrs = attrs
        return table

    return keep


def pooled_table(parts: dict, *, dataset: str, root, labelled: bool = True,
                 split: str | None = None) -> pd.DataFrame:
    """One table of the images of several readers' tables (``parts``: source name -> table, in
    order): ``path``, ``split`` (each table's, or ``split`` for every row), ``source`` (the name)
    and, ``labelled``, every table's labels as ``<source>/<label>`` columns (float32; NaN where a
    table has no such column), listed in ``attrs["labels"]``."""
    frames = []
    for name, t in parts.items():
        frame = pd.DataFrame({"path": t["path"].to_numpy(),
                              "split": split or t["split"].to_numpy(), "source": name})
        for c in t.attrs["labels"] if labelled else ():
            frame[f"{name}/{c}"] = t[c].to_numpy()
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs = {"dataset": dataset, "root": str(Path(root).resolve())}
    if labelled:
        labels = [c for c in table.columns if "/" in c]
        table[labels] = table[labels].astype("float32")
        table.attrs["labels"] = labels
    return table


def sample_multilabel(rng: np.random.Generator, prevalence: dict, max_labels: int = 4) -> list:
    """Draw a co-occurring label set with independent Bernoulli draws, capped at ``max_labels``.

    Used by the phantom writers. An empty list means "No Finding".
    """
    chosen = [name for name, p in prevalence.items() if rng.random() < p]
    if len(chosen) > max_labels:
        chosen = list(rng.choice(chosen, size=max_labels, replace=False))
    return sorted(chosen, key=list(prevalence).index)


# ----------------------------------------------------------------------------- dataset folders
# (added with the montgomery / lungmasks / mura / tbx11k readers)

def find_dataset_dir(root, folder: str, marker: str | None = None) -> Path:
    """Return the dataset folder ``folder`` given ``root``, which may be the folder above it (the
    official layout: ``root/folder/...``) or the folder itself. ``marker`` (a path relative to
    the dataset folder) identifies the folder itself when ``root`` is not named ``folder``.
    Raises DataError naming both places looked at when neither holds the dataset."""
    root = Path(root)
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (marker is not None and (root / marker).exists()):
        return root
    raise DataError(f"no {folder!r} folder under {root} (and {root} is not that folder itself)")


# ----------------------------------------------------------------------------- strict label values
# (added with the chexpert / pedicxr readers)

def parse_label_columns(df: pd.DataFrame, columns, path, allowed=(1.0, 0.0),
                        blank_ok: bool = False, first_line: int = 2) -> np.ndarray:
    """Parse label columns of a CSV read as text into a float32 matrix (rows x ``columns``).

    ``df`` must have been read with ``dtype=str, keep_default_na=False`` so that blanks stay
    ``""``. Numbers equal to one of ``allowed`` are kept (``"1"``, ``"1.0"`` and ``" 1.0 "`` all
    read as 1.0); a blank becomes NaN when ``blank_ok`` and is an error otherwise; anything else
    raises :class:`DataError` naming the file, the 1-based line number (``first_line`` is the line
    of the first data row: 2 below a one-line header; blank lines, which pandas skips, are not
    counted) and the column.
    """
    allowed = np.asarray(allowed, np.float64)
    out = np.empty((len(df), len(columns)), np.float32)
    for j, col in enumerate(columns):
        text = df[col].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64, copy=True)
        blank = (text == "").to_numpy()
        ok = np.isin(values, allowed) | (blank & blank_ok)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            want = ", ".join(f"{a:g}" for a in allowed) + (" or blank" if blank_ok else "")
            raise DataError(f"{path}: line {i + first_line}, column {col!r}: unknown label value "
                            f"{df[col].iloc[i]!r} ({int((~ok).sum())} bad value(s) in this "
                            f"column); expected {want}")
        values[blank] = np.nan
        out[:, j] = values
    return out


# ----------------------------------------------------------------------------- missing files

def check_files_exist(df: pd.DataFrame, missing: str, where, what: str = "image(s)") -> pd.DataFrame:
    """Raise a DataError naming the first missing ``path`` files (``missing="error"``) or drop
    those rows (``missing="drop"``)."""
    if missing not in ("error", "drop"):
        raise DataError(f"missing must be 'error' or 'drop', got {missing!r}")
    exists = np.array([os.path.isfile(p) for p in df["path"]], bool)
    if exists.all():
        return df
    if missing == "error":
        names = df.loc[~exists, "path"].head(5).tolist()
        raise DataError(f"{where}: {int((~exists).sum())} {what} are missing, e.g. {names}")
    return df.loc[exists].reset_index(drop=True)
