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
