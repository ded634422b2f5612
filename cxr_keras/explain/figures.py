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
