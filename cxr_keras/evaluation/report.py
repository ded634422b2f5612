"""Markdown tables that put our numbers next to the paper's."""

from __future__ import annotations

import math


def _fmt(v):
    if v is None:
        return "-"
    v = float(v)
    return "-" if math.isnan(v) else f"{v:.4f}"


def comparison_table(ours: dict, paper: dict, title: str = "") -> str:
    """Markdown table ``item | paper | ours | difference`` (difference = ours - paper, 4 decimals).

    Rows follow the paper's order, then items only we report; a missing or NaN value is "-"
    (and so is the difference).
    """
    items = list(paper) + [k for k in ours if k not in paper]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| item | paper | ours | difference |", "|---|---:|---:|---:|"]
    for item in items:
        p, o = paper.get(item), ours.get(item)
        ok = p is not None and o is not None and not math.isnan(float(p)) \
            and not math.isnan(float(o))
        d = float(o) - float(p) if ok else None
        diff = "-" if d is None else f"{d:+.4f}"
        lines.append(f"| {item} | {_fmt(p)} | {_fmt(o)} | {diff} |")
    return "\n".join(lines) + "\n"


def metrics_table(ours: dict, paper: dict, metrics, title: str = "", names: dict | None = None) -> str:
    """Markdown table with one row per model: ``ours (paper)`` in every metric column.

    ``ours`` and ``paper`` map a row key to ``{metric: value}``; a paper value may be a
    ``(mean, std)`` pair (printed ``mean ± std``) and a string is printed as it is. Rows follow
    ``ours``, then paper-only rows; ``names`` gives display names for the keys.
    """
    def cell(v):
        if isinstance(v, str):
            return v
        if isinstance(v, (tuple, list)) and len(v) == 2:
            return f"{_fmt(v[0])} ± {_fmt(v[1])}"
        return _fmt(v)

    names = names or {}
    lines = [f"### {title}", ""] if title else []
    lines += ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for key in list(ours) + [k for k in paper if k not in ours]:
        o, p = ours.get(key, {}), paper.get(key, {})
        cells = []
        for m in metrics:
            text = cell(o.get(m)) if m in o else "-"
            if m in p:
                text += f" ({cell(p[m])})"
            cells.append(text)
        lines.append(f"| {names.get(key, key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def phantom_note(dataset: str, data: str, more: str = "") -> list:
    """A report's first lines when its run used phantom data (``dataset`` "phantom..."): its
    numbers show the pipeline, not the paper's results; ``[]`` for real data."""
    if not dataset.startswith("phantom"):
        return []
    return [f"Data: **phantom** {data} (synthetic). Numbers are not comparable with the paper's; "
            "the tables show the pipeline end to end." + (f" {more}" if more else ""), ""]
