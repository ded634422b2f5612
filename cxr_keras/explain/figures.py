"""Grad-CAM figures: heatmaps blended over greyscale images in a titled grid (the papers' Grad-CAM
figures: fzlpr Fig. 7, multiloss Fig. 9, mlrfnet Fig. 11)."""

from __future__ import annotations

import numpy as np

from ..io import atomic_path
from .gradcam import overlay


def overlay_grid(grey, heatmaps, titles, path=None, cols: int = 3, boxes=None, cell=(3.2, 3.4),
                 fontsize: int = 7, dpi: int = 110):
    """One panel per image, row-major, ``cols`` wide: ``grey[k]`` (uint8 HxW) under
    ``heatmaps[k]`` titled ``titles[k]``, with ``boxes[k]`` = (x, y, w, h) drawn when given.
    Returns the ``matplotlib.figure.Figure``, written atomically to ``path`` when one is given;
    for no images, None (and nothing is written)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(grey)
    if n == 0:
        return None
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(overlay(grey[k], heatmaps[k]))
        if boxes is not None:
            x, y, w, h = boxes[k]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
        ax.set_title(titles[k], fontsize=fontsize)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    return fig


def top_label_gradcam(model, ds, y_true, prob, labels, path=None, n: int = 9,
                      layer_name: str = "relu"):
    """A multi-label model's Grad-CAM of each image's top predicted label at ``layer_name``, on
    the ``n`` images of ``ds`` (ImageNet-normalised) with the most findings in ``y_true`` (only
    those rows are kept in memory), each titled with its true and predicted labels (probability
    ``prob`` > 0.5; "No Finding" for none) and the label shown (fzlpr Fig. 7)."""
    from ..data.pipeline import imagenet_grey
    from ..inference.batches import gather_rows
    from .gradcam import grad_cam

    order = np.argsort(-np.nansum(y_true, axis=1), kind="stable")[:n]
    picked = gather_rows(ds, order)
    xs = np.stack([picked[i] for i in order])
    cls = np.argmax(prob[order], axis=1)
    cams = grad_cam(model, xs, cls, layer_name=layer_name)
    titles = []
    for i, c in zip(order, cls):
        truth = [labels[j] for j in np.flatnonzero(y_true[i] > 0.5)] or ["No Finding"]
        pred = [labels[j] for j in np.flatnonzero(prob[i] > 0.5)] or ["No Finding"]
        titles.append(f"GT: {', '.join(truth)}\nPred: {', '.join(pred)}\nCAM: {labels[c]}")
    return overlay_grid(imagenet_grey(xs), cams, titles, path)


def models_gradcam(models, images, classes, class_names, path=None, cell=(2.6, 2.6), dpi: int = 100):
    """One row per image, one column per model (``models``: ``[(name, model, layer), ...]``):
    each model's Grad-CAM of the image's class ``classes[i]`` at its layer, over the image (its
    first channel on 0-255), titled with the model's name and the class (multiloss Fig. 9)."""
    from .gradcam import grad_cam

    cams = [grad_cam(model, images, classes, layer_name=layer) for _, model, layer in models]
    grey = np.clip(images[..., 0], 0, 255).astype(np.uint8)
    panels = [(grey[r], cams[c][r], f"{name}\n{class_names[classes[r]]}")
              for r in range(len(images)) for c, (name, _, _) in enumerate(models)]
    return overlay_grid(*zip(*panels), path, cols=len(models), cell=cell, dpi=dpi)
