"""Procedural chest and bone radiograph phantoms: synthetic images with exact lung masks, boxes
and learnable findings (:func:`render_chest`, :func:`render_bone`). The dataset writers in
``cxr_keras.data.datasets`` put them into each dataset's official layout."""

from .bone import hand_maturity, render_bone, render_hand
from .chest import CHEST_FINDINGS, EXTRA_FINDINGS, NIH_FINDINGS, ChestPhantom, render_chest

__all__ = ["CHEST_FINDINGS", "EXTRA_FINDINGS", "NIH_FINDINGS", "ChestPhantom", "hand_maturity", "render_bone",
           "render_chest", "render_hand"]
