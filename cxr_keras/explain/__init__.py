"""Explanations: Grad-CAM heatmaps and overlays."""

from cxr_keras.explain.gradcam import grad_cam, overlay

__all__ = ["grad_cam", "overlay"]
