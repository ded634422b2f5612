"""Figures of the ``multiloss`` paper: confusion matrices and one-vs-rest ROC / PR curves
(Figs. 5, 7, 8), polar coordinates plots of metrics per model (Figs. 3, 4, 6) and lung-mask
overlays for segmentation examples. Each function returns a ``matplotlib.figure.Figure`` and
writes it (atomically) only when given a ``path``, as in :mod:`cxr_keras.evaluation.plots`."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from cxr_keras.evaluation.plots import finish_figure


def plot_confusion_matrix(cm, labels, path=None, normalize=False, title="Confusion matrix",
                          cmap="Blues"):
    """Confusion matrix as a heat map with the counts written in the cells.

    ``cm`` is K x K with rows = true class, columns = predicted class (as
    ``multiclass_metrics(...)["confusion_matrix"]``). ``normalize=True`` divides each row by its
    total (per-class recall on the diagonal) and prints fractions; an empty row stays 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = len(labels)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix {cm.shape} does not match {k} labels")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        fmt = "{:.2f}"
    else:
        shown = cm
        fmt = "{:.0f}"
    fig = Figure(figsize=(1.3 * k + 2.5, 1.3 * k + 2))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    thresh = (1.0 if normalize else max(shown.max(), 1)) / 2.0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=10,
                    color="white" if shown[i, j] > thresh else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([str(x) for x in labels], rotation=45, ha="right")
    ax.set_yticklabels([str(x) for x in labels])
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return finish_figure(fig, path)


def plot_roc_pr(y_true, proba, labels, path=None, title=None):
    """Two panels: one-vs-rest ROC curves (left) and precision-recall curves (right), one curve
    per class, with the class's AUROC / average precision in the legend (paper Figs. 5, 7, 8).

    ``y_true`` holds class indices (N,), ``proba`` is (N, K). A class absent from ``y_true`` (or
    present in every row) is not drawn.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(labels) or len(proba) != len(y_true):
        raise ValueError(f"proba {proba.shape} does not match {len(y_true)} targets and "
                         f"{len(labels)} labels")
    fig = Figure(figsize=(12, 5.2))
    ax_roc, ax_pr = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10"]
    for j, label in enumerate(labels):
        t = y_true == j
        if t.all() or not t.any():
            continue
        color = cmap(j % 10)
        fpr, tpr, _ = roc_curve(t, proba[:, j])
        ax_roc.plot(fpr, tpr, lw=1.4, color=color,
                    label=f"{label} (AUC = {roc_auc_score(t, proba[:, j]):.4f})")
        prec, rec, _ = precision_recall_curve(t, proba[:, j])
        ax_pr.plot(rec, prec, lw=1.4, color=color,
                   label=f"{label} (AP = {average_precision_score(t, proba[:, j]):.4f})")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax_roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
               ylabel="true positive rate", title="ROC curves (one-vs-rest)")
    ax_roc.legend(loc="lower right", fontsize=8)
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
              title="Precision-recall curves (one-vs-rest)")
    ax_pr.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    return finish_figure(fig, path)


def plot_confusion_roc_pr(y_true, proba, labels, stem, title=None):
    """The confusion matrix of the most probable class (``<stem>_confusion.png``) and the ROC and
    precision-recall curves (``<stem>_roc_pr.png``, :func:`plot_roc_pr`) of class indices
    ``y_true`` and probabilities ``proba`` (N, K); ``stem``: a path without its ending."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, np.argmax(proba, axis=1), labels=range(len(labels)))
    plot_confusion_matrix(cm, labels, f"{stem}_confusion.png", title=title)
    plot_roc_pr(y_true, proba, labels, f"{stem}_roc_pr.png", title=title)


_ALIASES = {"fscore": "f1", "f1score": "f1", "fmeasure": "f1"}


def _norm_key(name):
    key = re.sub(r"[\s_\-]+", "", str(name)).lower()
    return _ALIASES.get(key, key)


def _lookup(metrics_of_model, metric):
    if metric in metrics_of_model:
        return float(metrics_of_model[metric])
    wanted = _norm_key(metric)
    for key, value in metrics_of_model.items():
        if _norm_key(key) == wanted:
            return float(value)
    raise KeyError(f"metric {metric!r} not among {list(metrics_of_model)}")


def plot_polar(values, metrics=("F-score", "MCC"), path=None, title="", rmin=None, rmax=1.0):
    """Polar coordinates plot of metrics per model (paper Figs. 3, 4, 6).

    ``values`` maps model name -> {metric name -> value} (e.g. the dicts of
    ``multiclass_metrics``). Each model gets one angle (in the order given), each metric one
    closed line of radial values with markers. Metric names are matched ignoring case, spaces,
    ``-`` and ``_``, and "F-score" / "F1" are the same, so ``"F-score"`` and ``"MCC"`` find the
    ``"f1"`` and ``"mcc"`` entries of ``multiclass_metrics``. The radial axis runs from ``rmin``
    (default: the smallest value minus 0.05, rounded down to 0.05) to ``rmax``. ``path``: the
    PNG to write, by keyword or as the third argument.
    """
    names = list(values)
    if not names:
        raise ValueError("plot_polar: no models")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    table = np.array([[_lookup(values[m], metric) for m in names] for metric in metrics])
    angles = np.linspace(0.0, 2.0 * np.pi, len(names), endpoint=False)
    closed = np.append(angles, angles[:1])
    if rmin is None:
        finite = table[np.isfinite(table)]
        low = float(finite.min()) if finite.size else 0.0
        rmin = np.floor((low - 0.05) / 0.05) * 0.05
    fig = Figure(figsize=(7, 7))
    ax = fig.add_subplot(projection="polar")
    cmap = matplotlib.colormaps["tab10"]
    for i, metric in enumerate(metrics):
        ax.plot(closed, np.append(table[i], table[i][:1]), "-o", lw=1.6, ms=4,
                color=cmap(i % 10), label=str(metric))
    ax.set_xticks(angles)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(rmin, rmax)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=9)
    if title:
        ax.set_title(title, pad=20)
    return finish_figure(fig, path)


def plot_mask_overlay(image, mask_true, mask_pred, path=None, threshold=0.5, title=None):
    """A radiograph with the contours of the reference mask (green) and the predicted mask
    (red) (segmentation examples; ``mask_true`` may be None).

    ``image`` is (H, W) or (H, W, C) (first channel shown in grey); masks are (H, W) or
    (H, W, 1) of probabilities or labels, outlined at ``threshold``.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image[..., 0]
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(image, cmap="gray")
    handles = []
    for mask, color, name in ((mask_true, "lime", "reference"), (mask_pred, "red", "predicted")):
        if mask is None:
            continue
        m = np.asarray(mask, dtype=np.float64)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != image.shape:
            raise ValueError(f"{name} mask {m.shape} does not match image {image.shape}")
        if (m >= threshold).any() and (m < threshold).any():
            ax.contour(m, levels=[threshold], colors=[color], linewidths=1.5)
        handles.append(Line2D([], [], color=color, lw=1.5, label=name))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return finish_figure(fig, path)
