"""Figures of the ``fzlpr`` paper: per-class ROC curves (Fig. 5), AUC differences against tau = 1
(Fig. 6) and training curves.

Every function builds and returns a ``matplotlib.figure.Figure`` (a notebook shows it) and writes
it to ``path`` only when one is given. Figures are made without ``pyplot``: no backend is chosen
or switched, nothing is kept in pyplot's list of open figures, and a script needs no display.
Files are written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from cxr_keras.io import atomic_path


def save_figure(fig, path, dpi=120, bbox_inches="tight") -> Path:
    """Write ``fig`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches)
    return Path(path)


def finish_figure(fig, path=None, **savefig):
    """``fig``, written to ``path`` first when one is given (see :func:`save_figure`)."""
    if path is not None:
        save_figure(fig, path, **savefig)
    return fig


def plot_roc_curves(y_true, y_score, labels, path=None, title="ROC curves"):
    """One ROC curve per class with its AUC in the legend (paper Fig. 5). NaN targets skipped."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    for j, label in enumerate(labels):
        keep = ~np.isnan(y_true[:, j])
        t = y_true[keep, j] >= 0.5
        if t.all() or not t.any():
            continue
        fpr, tpr, _ = roc_curve(t, y_score[keep, j])
        auc = roc_auc_score(t, y_score[keep, j])
        ax.plot(fpr, tpr, lw=1.2, color=cmap(j % 20), label=f"{label} (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=7)
    return finish_figure(fig, path)


def plot_auc_differences(per_label_auc_by_tau, path=None, reference_tau=1.0,
                         title="AUC difference against tau = 1"):
    """Grouped bars of AUC(tau) - AUC(reference_tau) per label (paper Fig. 6).

    ``per_label_auc_by_tau`` maps tau -> {label: auc}; the reference tau is not drawn.
    """
    if reference_tau not in per_label_auc_by_tau:
        raise ValueError(f"reference tau {reference_tau} not among {list(per_label_auc_by_tau)}")
    ref = per_label_auc_by_tau[reference_tau]
    labels = list(ref)
    taus = [t for t in per_label_auc_by_tau if t != reference_tau]
    x = np.arange(len(labels))
    width = 0.8 / max(len(taus), 1)
    fig = Figure(figsize=(max(8, 0.7 * len(labels)), 4.5))
    ax = fig.subplots()
    for k, tau in enumerate(taus):
        aucs = per_label_auc_by_tau[tau]
        diff = [aucs.get(lab, np.nan) - ref[lab] for lab in labels]
        ax.bar(x + (k - (len(taus) - 1) / 2) * width, diff, width, label=f"tau = {tau:g}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set(ylabel=f"AUC - AUC(tau = {reference_tau:g})", title=title)
    ax.legend(fontsize=8)
    return finish_figure(fig, path)


def plot_training_curves(history, path=None, title="Training curves"):
    """Plot every metric of a Keras history (dict of lists or a CSVLogger CSV path) by epoch.

    ``x`` and ``val_x`` share one panel; columns named ``epoch`` are the x axis when present.
    """
    if isinstance(history, (str, Path)):
        import pandas as pd

        history = pd.read_csv(history).to_dict(orient="list")
    history = {k: list(v) for k, v in dict(history).items()}
    epochs = history.pop("epoch", None)
    bases = [k for k in history if not k.startswith("val_")]
    bases += [k[4:] for k in history if k.startswith("val_") and k[4:] not in history]
    if not bases:
        raise ValueError("plot_training_curves: empty history")
    fig = Figure(figsize=(4 * len(bases), 3.5))
    axes = fig.subplots(1, len(bases), squeeze=False)
    for ax, key in zip(axes[0], bases):
        for k, style in ((key, "-"), ("val_" + key, "--")):
            if k in history:
                ys = history[k]
                xs = epochs if epochs is not None else range(1, len(ys) + 1)
                ax.plot(list(xs), ys, style, label=k)
        ax.set(xlabel="epoch", title=key)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return finish_figure(fig, path)


def plot_reconstructions(images, reconstructions, masks, path=None, norm_pix=False, patch_size=16,
                         title="MAE reconstructions"):
    """Rows of (input, masked input, reconstruction, reconstruction with the visible patches
    pasted back) for an MAE. ``images`` and ``reconstructions`` (B, H, W, C) on the model's input
    scale; ``masks`` (B, H, W, C) with 1 on masked pixels. With ``norm_pix`` the reconstruction is
    per-patch normalised: it is mapped back with each patch's mean and std of the input."""
    images = np.asarray(images, np.float64)
    rec = np.asarray(reconstructions, np.float64)
    masks = np.asarray(masks, np.float64)
    if norm_pix:
        b, h, w, c = images.shape
        p = patch_size

        def patches(a):
            return a.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(
                b, h // p, w // p, -1)

        def image(a):
            return a.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(
                b, h, w, c)

        src = patches(images)
        rec = image(patches(rec) * np.sqrt(src.var(-1, ddof=1, keepdims=True) + 1e-6)
                    + src.mean(-1, keepdims=True))
    pasted = images * (1 - masks) + rec * masks
    lo, hi = images.min(), images.max()

    def show(ax, a):
        ax.imshow(np.clip((a[..., 0] - lo) / max(hi - lo, 1e-9), 0, 1), cmap="gray")
        ax.axis("off")

    n = len(images)
    fig = Figure(figsize=(8, 2 * n))
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        for j, (a, name) in enumerate(((images, "input"), (images * (1 - masks), "masked"),
                                       (rec, "reconstruction"), (pasted, "visible + reconstructed"))):
            show(axes[i, j], a[i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    fig.suptitle(title)
    return finish_figure(fig, path)


def plot_mae_reconstructions(mae, images, path=None, title="MAE reconstructions"):
    """:func:`plot_reconstructions` of a masked autoencoder (:class:`~cxr_keras.models.mae.
    MaskedAutoencoder`) on ``images``: its reconstruction of each, under a fresh random mask."""
    out = mae.reconstruct(images)
    masks = mae.images_from_patches(out["mask"][..., None] * np.ones((1, 1, mae.patch_size ** 2 * 3)))
    return plot_reconstructions(np.asarray(images), mae.images_from_patches(out["pred"]), masks, path,
                                norm_pix=mae.norm_pix_loss, patch_size=mae.patch_size, title=title)


def plot_image_rows(rows, titles, path=None, width: float = 7.0, row_height: float = 2.4,
                    dpi: int = 100):
    """One row of grey panels per entry of ``rows`` (its images, left to right), ``titles[j]``
    over the panels of column j (e.g. an image, its mask and its crop)."""
    fig = Figure(figsize=(width, row_height * len(rows)))
    axes = fig.subplots(len(rows), len(titles), squeeze=False)
    for images, ax in zip(rows, axes):
        for a, img, title in zip(ax, images, titles):
            a.imshow(img, cmap="gray")
            a.set_title(title, fontsize=8)
            a.axis("off")
    fig.tight_layout()
    return finish_figure(fig, path, dpi=dpi, bbox_inches=None)
