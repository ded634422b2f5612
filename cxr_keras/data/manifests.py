"""Dataset manifests (``cxr_keras/data_manifests/<name>.json``, package data read through
:mod:`importlib.resources`, so wheels and ``pip install --user`` find them) and the check of a
user's copy against one.

A manifest holds: ``name``, ``title``, ``citation``, ``licence``, ``download`` (list of URLs),
``layout`` (list of ``{"pattern": glob relative to the root, "required": bool, "expected_count":
int or null, "alternatives": [globs], "description": str}``), ``label_schema`` (``type``,
``labels`` or ``classes``, ``source``, ``values``), ``splits`` (``description`` and ``files``:
name -> expected line count), ``expected_counts`` and ``reader`` (module name or null).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..io import DataError


def _manifest_files():
    """The installed package's manifest folder (a :class:`importlib.resources` traversable)."""
    return resources.files("cxr_keras") / "data_manifests"


def available() -> list[str]:
    """Names of the datasets that have a manifest."""
    return sorted(p.name[:-5] for p in _manifest_files().iterdir() if p.name.endswith(".json"))


def load_manifest(name: str) -> dict:
    """The manifest of dataset ``name`` as a dict."""
    path = _manifest_files() / f"{name}.json"
    if name not in available():
        raise DataError(f"no manifest for dataset {name!r}; known: {', '.join(available())}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"manifest {name}.json: invalid JSON: {e}") from e


@dataclass
class CheckResult:
    dataset: str
    root: str
    missing: list = field(default_factory=list)      # required layout entries not found
    unexpected: list = field(default_factory=list)   # top-level entries no pattern explains
    counts: list = field(default_factory=list)       # (pattern, found, expected)
    reader_error: str | None = None
    table_summary: dict | None = None

    @property
    def usable(self) -> bool:
        return not self.missing and self.reader_error is None

    def format(self) -> str:
        lines = [f"dataset {self.dataset} at {self.root}"]
        for pattern, found, expected in self.counts:
            exp = "" if expected is None else f" (official: {expected})"
            lines.append(f"  {pattern}: {found} found{exp}")
        for m in self.missing:
            lines.append(f"  MISSING: {m}")
        for u in self.unexpected:
            lines.append(f"  unexpected: {u}")
        if self.reader_error:
            lines.append(f"  READER FAILED: {self.reader_error}")
        if self.table_summary:
            lines.append("  table: " + ", ".join(f"{k}={v}" for k, v in self.table_summary.items()))
        lines.append("  usable: yes" if self.usable else "  usable: NO")
        return "\n".join(lines)


def check(dataset: str, root, run_reader: bool = True) -> CheckResult:
    """Verify the copy of ``dataset`` under ``root`` against its manifest."""
    man = load_manifest(dataset)
    root = Path(root)
    res = CheckResult(dataset, str(root))
    if not root.is_dir():
        res.missing.append(f"root folder {root}")
        return res
    tops = set()
    for entry in man.get("layout", []):
        patterns = [entry["pattern"]] + list(entry.get("alternatives", []))
        tops.update(p.split("/")[0] for p in patterns)
        found = 0
        for p in patterns:
            found = sum(1 for _ in root.glob(p))
            if found:
                break
        res.counts.append((entry["pattern"], found, entry.get("expected_count")))
        if entry.get("required", True) and found == 0:
            alt = f" (or {', '.join(patterns[1:])})" if len(patterns) > 1 else ""
            res.missing.append(f"{entry['pattern']}{alt}: {entry.get('description', '')}".rstrip(": "))
    for child in sorted(root.iterdir()):
        if not any(fnmatch.fnmatch(child.name, t) for t in tops) and not child.name.startswith("."):
            res.unexpected.append(child.name)
    if run_reader and man.get("reader") and not res.missing:
        from . import load_table

        try:
            df = load_table(dataset, root)
            summary = {"rows": len(df)}
            summary.update({f"{s}": int((df["split"] == s).sum()) for s in ("train", "val", "test")})
            if "patient_id" in df.columns:
                summary["patients"] = int(df["patient_id"].nunique())
            res.table_summary = summary
        except (DataError, OSError, ValueError, KeyError) as e:
            res.reader_error = str(e)
    return res
