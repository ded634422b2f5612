"""Markdown tables that put our numbers next to the paper's, and the cells and tables the
recipes' reports share."""

from __future__ import annotations

import math

import numpy as np


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


def mean_std(values, with_n: bool = False) -> str:
    """``mean (std)`` of the finite ``values`` (None skipped; sample std, 0 for one value; NaN
    for none), 3 decimals; ``with_n`` adds how many were given: ``mean (std, n=N)``."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], np.float64)
    mu = float(v.mean()) if len(v) else float("nan")
    sd = float("nan") if len(v) == 0 else float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{mu:.3f} ({sd:.3f}" + (f", n={len(values)})" if with_n else ")")


def history_ends(history: dict) -> dict:
    """``{"first": {term: first epoch's value}, "final": {term: last epoch's}}`` of a training
    history (:func:`cxr_keras.training.read_history`; ``epoch`` and empty terms left out)."""
    terms = {k: v for k, v in history.items() if k != "epoch" and v}
    return {"first": {k: v[0] for k, v in terms.items()}, "final": {k: v[-1] for k, v in terms.items()}}


def pretraining_numbers(history: dict, images_per_epoch: int, seconds) -> dict:
    """The numbers of a (self-supervised) pretraining run: ``epochs`` trained, the ``first`` and
    ``final`` loss terms (:func:`history_ends`), ``train_seconds`` and ``images_per_second``
    (None without ``seconds``: a resumed run has no honest rate)."""
    epochs = len(history.get("loss", []))
    return dict(epochs=epochs, **history_ends(history), train_seconds=seconds,
                images_per_second=(images_per_epoch * epochs / seconds) if seconds else None)


def loss_terms_table(ends: dict) -> list:
    """Markdown lines: each term's first and last epoch value (:func:`history_ends`), by name."""
    return ["| term | first epoch | last epoch |", "|---|---:|---:|"] + [
        f"| {k} | {ends['first'][k]:.4f} | {ends['final'][k]:.4f} |" for k in sorted(ends["final"])]
